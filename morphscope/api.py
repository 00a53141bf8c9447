"""The public API, for scripts and notebooks: load a model, read a structure, report, expand,
export, rebuild.

A *model* is whatever you have in hand: a live ``torch.nn.Module`` (with ``example_input``, one
input batch), a built ``keras.Model``, a regularizer (its graph is reused), a file path
(``.pt2``, ``.keras``, ``.h5``, a saved graph ``.json``), ``torchvision:NAME``, ``keras:NAME``,
``example:digits``, or a loaded :class:`~morphscope.graph.ChannelGraph`. A *structure* is a
checkpoint path, a state_dict, morph-net's widths JSON as a dict, a regularizer (its gammas
now) or a loaded structure; ``checkpoints`` takes one of them or a list. Reports are plain
data: the same JSON-ready dicts ``morphscope report|expand|export --json`` print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from morphscope.analyzers.alive import DEFAULT_THRESHOLD
from morphscope.graph import ChannelGraph


def load_model(model: Any, input_shape: tuple[int, ...] | None = None,
               example_input: Any = None) -> ChannelGraph:
    """The channel graph of a model (see the module docstring; a graph passes through).

    Raises
    ------
    MorphScopeError
        With one line naming the model and the problem.
    """
    from morphscope.importers.objects import graph_of

    return graph_of(model, example_input, input_shape)


def load_structure(model: Any, structure: Any, example_input: Any = None) -> Any:
    """A structure (checkpoint path, state_dict, widths dict, regularizer) matched to the
    model: a :class:`~morphscope.importers.checkpoints.LearnedStructure`."""
    from morphscope.importers.objects import structure_of

    return structure_of(load_model(model, example_input=example_input), structure)


def _structures(checkpoints: Any) -> list[Any]:
    """One structure or a list of them, as a list (a path or a dict is one)."""
    if checkpoints is None:
        return []
    if isinstance(checkpoints, (list, tuple)):
        return list(checkpoints)
    return [checkpoints]


def _analysis(model, checkpoints, threshold, convention="physical", scope=None, example_input=None):
    from morphscope.analyzers.morph import morph
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.objects import is_regularizer, is_torch_module, structure_of

    given = _structures(checkpoints)
    if example_input is None and is_torch_module(model) and any(map(is_regularizer, given)):
        graph = next(filter(is_regularizer, given)).graph  # the regularizer captured this model
    else:
        graph = load_model(model, example_input=example_input)
    width_model = compile_width_model(graph, convention, scope)
    structures = [structure_of(graph, s) for s in given]
    return graph, width_model, structures, [morph(width_model, s, threshold) for s in structures]


def report(model: Any, checkpoints: Any = (), threshold: float = DEFAULT_THRESHOLD,
           convention: str = "physical", scope: Any = None, example_input: Any = None) -> dict[str, Any]:
    """Seed costs per layer and in total, and each structure's alive costs and topology.
    ``report(module, example_input)`` reads a tensor in second place as the example input.
    ``convention`` (``physical`` or ``morph-net``) and ``scope`` (a
    :class:`~morphscope.analyzers.conventions.Scope`: prunable outputs, analysed part) as the
    CLI's ``--convention``, ``--prune-outputs`` and boundary options; the same for
    :func:`expand`, :func:`export` and :func:`rebuild`.

    Returns
    -------
    dict
        ``seed`` (``macs``, ``flops`` = 2 x macs, ``params``, ``size``, ``latency_s`` per
        hardware, ...), ``layers``, and ``morphed``: one entry per structure.
    """
    from morphscope.analyzers.report import seed_report, structure_entry
    from morphscope.importers.objects import is_torch_module

    if example_input is None and is_torch_module(model) and hasattr(checkpoints, "shape"):
        example_input, checkpoints = checkpoints, ()  # report(module, example_input), as written most
    graph, width_model, structures, morphed = _analysis(model, checkpoints, threshold, convention,
                                                        scope, example_input)
    doc = seed_report(graph, convention=convention)
    doc["morphed"] = [structure_entry(graph, width_model, s, m, threshold)
                      for s, m in zip(structures, morphed)]
    return doc


def expand(model: Any, checkpoint: Any, resource: str = "flops", budget: float | None = None,
           hardware: str = "V100", threshold: float = DEFAULT_THRESHOLD, convention: str = "physical",
           scope: Any = None, round_to: int = 1, example_input: Any = None) -> dict[str, Any]:
    """The largest uniform width multiplier that keeps ``resource`` within ``budget``
    (default: the seed's own cost, the paper's expand step), with the expanded widths, each
    rounded up to a multiple of ``round_to`` (hardware alignment) before it is costed."""
    from morphscope.analyzers.hardware import get_hardware
    from morphscope.analyzers.report import expand_entry

    graph, width_model, _, morphed = _analysis(model, checkpoint, threshold, convention, scope, example_input)
    hw = get_hardware(hardware)
    if budget is None:
        budget = width_model.target_cost(width_model.seed_widths, resource, hw)
    return expand_entry(graph, width_model, morphed[0], resource, budget, hw, round_to)


def _plan(model, checkpoint, multiplier, threshold, convention, scope, round_to, example_input):
    from morphscope.analyzers.morph import export_plan
    from morphscope.importers.objects import is_pt2

    graph, width_model, structures, morphed = _analysis(model, checkpoint, threshold, convention,
                                                        scope, example_input)
    if len(morphed) != 1:
        raise TypeError(f"pass one structure, not {len(morphed)}")
    plan = export_plan(graph, width_model, morphed[0], multiplier, structures[0].gammas, threshold,
                       round_to, remove_blocks=not is_pt2(model))
    return graph, width_model, morphed[0], plan


def export(model: Any, checkpoint: Any, multiplier: float | None = None,
           model_out: str | Path | None = None, threshold: float = DEFAULT_THRESHOLD,
           convention: str = "physical", scope: Any = None, round_to: int = 1,
           copy_weights: bool = False, example_input: Any = None) -> dict[str, Any]:
    """Widths per source op (morph-net's StructureExporter form), the per-layer table, the
    parameter count a rebuilt model will have (``predicted_params``) and what rounding to
    ``round_to`` adds; with ``model_out``, also the rebuilt model file (``.pt2`` or
    ``.keras``: :func:`rebuild`'s model) and its own parameter count (``model_params``)."""
    from morphscope.analyzers.morph import plan_totals, source_op_widths
    from morphscope.analyzers.report import rounding_added
    from morphscope.exporters.writers import layer_table

    graph, width_model, m, plan = _plan(model, checkpoint, multiplier, threshold, convention, scope,
                                        round_to, example_input)
    expanded = plan.widths
    out = {"widths": source_op_widths(graph, width_model, expanded),
           "table": layer_table(graph, width_model, m.widths, expanded),
           "predicted_params": plan_totals(width_model, plan)["params"],
           "rounding_added": rounding_added(width_model, m.widths, multiplier, round_to),
           "notes": list(plan.notes)}
    if model_out is not None:
        from morphscope.exporters.export import write_rebuilt_model
        from morphscope.exporters.files import check_targets
        from morphscope.importers.objects import rebuild_source

        if isinstance(model, ChannelGraph):
            raise TypeError("model_out needs the model itself (a module, a file or a zoo name), not a graph")
        inputs = {k: v for k, v in {"model": model, "checkpoint": checkpoint}.items() if isinstance(v, (str, Path))}
        check_targets({"model_out": model_out}, inputs)
        out["model_params"] = write_rebuilt_model(rebuild_source(model, graph.input_shape), graph,
                                                  width_model, plan, model_out, copy_weights)
    return out


def rebuild(model: Any, structure: Any, multiplier: float | None = None, copy_weights: bool = False,
            round_to: int = 1, threshold: float = DEFAULT_THRESHOLD, convention: str = "physical",
            scope: Any = None, example_input: Any = None) -> Any:
    """The smaller model itself: a new ``nn.Module`` or ``keras.Model`` with the learned widths.

    Parameters
    ----------
    model : torch.nn.Module, keras.Model, str or Path
        The seed: a live model (``example_input`` for a module), a ``.keras``/``.h5``/``.pt2``
        file or a zoo name. The seed itself is not changed.
    structure : path, state_dict, dict or regularizer
        What was learned: a gamma checkpoint, a state_dict, morph-net's widths JSON
        (op name -> channels) or the regularizer that trained ``model``.
    multiplier : float, optional
        Expand every learned width by this factor (the paper's expand step; see :func:`expand`).
    copy_weights : bool
        Copy the kept channels' weights (to fine-tune) instead of a fresh initialization (to
        retrain from scratch, the paper's recipe). Kept channels: the alive ones, then the
        best-scored where rounding or a one-channel floor needs more.
    round_to : int
        Round every pruned width up to a multiple of this (8 for tensor cores), tied groups,
        grouped convs and GroupNorm groups kept consistent.

    Returns
    -------
    torch.nn.Module, keras.Model or torch.export.ExportedProgram
        The rebuilt model, in eval mode; its parameter count is :func:`export`'s
        ``predicted_params``. A ``.pt2`` seed gives an ``ExportedProgram`` from the archive
        rewritten without running it (:mod:`morphscope.exporters.pt2_rewrite`).

    Raises
    ------
    MorphScopeError
        One line: a structure that does not fit, widths the model's code cannot take, weights
        that cannot be copied.

    Examples
    --------
    >>> small = morphscope.rebuild(model, reg, copy_weights=True, round_to=8)  # doctest: +SKIP
    """
    from morphscope.exporters.export import rebuild_model
    from morphscope.importers.objects import rebuild_source

    graph, width_model, _, plan = _plan(model, structure, multiplier, threshold, convention, scope,
                                        round_to, example_input)
    return rebuild_model(rebuild_source(model, graph.input_shape), graph, width_model, plan, copy_weights)


def measure(model: Any, structure: Any = None, multiplier: float | None = None, round_to: int = 1,
            batch: int = 1, threads: int | None = None, runs: int = 20, hardware: Any = "V100",
            device: str = "cpu", threshold: float = DEFAULT_THRESHOLD, convention: str = "physical",
            scope: Any = None, example_input: Any = None) -> dict[str, Any]:
    """Time the seed and the morphed model on this machine, with the predictions beside them.

    Rebuilds the morphed model as :func:`rebuild` does (a ``.pt2`` seed is rewritten, never run
    as it came: the seed timed is the same archive rewritten with nothing cut), then times
    each forward pass on random inputs of ``batch`` images (PyTorch: eval mode, no autograd;
    Keras: a ``tf.function`` in inference mode, CPU): ``runs`` timed calls after 5 warm-up
    calls, at ``threads`` intra-op threads.

    Returns
    -------
    dict
        ``seed`` and ``morphed`` (without ``structure``: the seed only): ``measured_s``
        (median), ``min_s``, ``max_s``, ``predicted_s`` (``hardware``: a roofline prediction
        times ``batch``, or a measured profile at its own batch) and ``error`` (predicted /
        measured - 1); ``speedup_measured``, ``speedup_predicted``; ``machine``, ``threads``,
        ``batch``, ``runs``, ``hardware`` and what its prediction is.

    Raises
    ------
    MorphScopeError
        A profile measured at another batch or with another framework, or a Keras model on cuda.
    """
    from morphscope.analyzers.hardware import get_hardware
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.exporters.timing import measure_rebuild
    from morphscope.importers.objects import rebuild_source

    if structure is None:
        graph = load_model(model, example_input=example_input)
        width_model, plan = compile_width_model(graph, convention, scope), None
    else:
        graph, width_model, _, plan = _plan(model, structure, multiplier, threshold, convention, scope,
                                            round_to, example_input)
    source = rebuild_source(model, graph.input_shape)
    return measure_rebuild(source, graph, width_model, plan, get_hardware(hardware), batch, threads, runs, device)


def profile(name: str = "this-machine", batch: int = 1, threads: int | None = None, device: str = "cpu",
            runs: int = 10, out: str | Path | None = None, progress: Any = None, framework: str = "torch") -> Any:
    """Time the op classes the cost model knows on this machine, in ``framework`` (``torch``
    or ``keras``), and fit a latency profile
    (see :mod:`morphscope.analyzers.hardware`); with ``out``, also write its JSON file, which
    ``hardware=`` accepts wherever a hardware name is (report, expand, the latency regularizers).

    Returns
    -------
    Hardware
        The profile, ready as ``hardware=``.
    """
    import json

    from morphscope.analyzers.hardware import profile_from_doc
    from morphscope.exporters.timing import profile_device

    doc = profile_device(name, batch, threads, device, runs, progress, framework=framework)
    if out is not None:
        from morphscope.exporters.files import check_targets, write_files

        target = check_targets({"out": out}, {})["out"]
        write_files({target: (json.dumps(doc, indent=2) + "\n").encode()})
    return profile_from_doc(doc, name)
