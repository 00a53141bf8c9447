"""The public API, for scripts and notebooks: load a model, read a structure, report, expand, export.

Every function takes a model as a spec (a file path, ``torchvision:NAME``, ``keras:NAME``,
``example:digits``) or an already loaded :class:`~morphscope.graph.ChannelGraph`, and returns
plain data: the same JSON-ready dicts ``morphscope report|expand --json`` prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from morphscope.graph import ChannelGraph

DEFAULT_THRESHOLD = 1e-2  # a channel is alive when its group's max |gamma| is above this


def load_model(spec: str | ChannelGraph, input_shape: tuple[int, ...] | None = None) -> ChannelGraph:
    """The channel graph of a model file or zoo name (a graph passes through).

    Raises
    ------
    MorphScopeError
        With one line naming the file and the problem.
    """
    if isinstance(spec, ChannelGraph):
        return spec
    from morphscope.importers.load import load_model as _load

    return _load(spec, input_shape)


def load_structure(model: str | ChannelGraph, checkpoint: str | Path) -> Any:
    """A checkpoint's gammas (or a morph-net alive file's counts) matched to the model's ops."""
    from morphscope.importers.checkpoints import load_structure as _load

    return _load(load_model(model), checkpoint)


def _analysis(model, checkpoints, threshold, convention="physical", scope=None):
    from morphscope.analyzers.morph import morph
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.checkpoints import load_structure as _load

    graph = load_model(model)
    width_model = compile_width_model(graph, convention, scope)
    structures = [_load(graph, path) for path in checkpoints]
    return graph, width_model, structures, [morph(width_model, s, threshold) for s in structures]


def report(model: str | ChannelGraph, checkpoints: Sequence[str | Path] = (),
           threshold: float = DEFAULT_THRESHOLD, convention: str = "physical",
           scope: Any = None) -> dict[str, Any]:
    """Seed costs per layer and in total, and each checkpoint's alive costs and topology.
    ``convention`` (``physical`` or ``morph-net``) and ``scope`` (a
    :class:`~morphscope.analyzers.conventions.Scope`: prunable outputs, analysed part) as the
    CLI's ``--convention``, ``--prune-outputs`` and boundary options; the same for
    :func:`expand` and :func:`export`.

    Returns
    -------
    dict
        ``seed`` (``macs``, ``flops`` = 2 x macs, ``params``, ``size``, ``latency_s`` per
        hardware, ...), ``layers``, and ``morphed``: one entry per checkpoint.
    """
    from morphscope.analyzers.report import seed_report, structure_entry

    graph, width_model, structures, morphed = _analysis(model, checkpoints, threshold, convention, scope)
    doc = seed_report(graph, convention=convention)
    doc["morphed"] = [structure_entry(graph, width_model, s, m, threshold)
                      for s, m in zip(structures, morphed)]
    return doc


def expand(model: str | ChannelGraph, checkpoint: str | Path, resource: str = "flops",
           budget: float | None = None, hardware: str = "V100",
           threshold: float = DEFAULT_THRESHOLD, convention: str = "physical",
           scope: Any = None) -> dict[str, Any]:
    """The largest uniform width multiplier that keeps ``resource`` within ``budget``
    (default: the seed's own cost, the paper's expand step), with the expanded widths."""
    from morphscope.analyzers.hardware import get_hardware
    from morphscope.analyzers.report import expand_entry

    graph, width_model, _, morphed = _analysis(model, [checkpoint], threshold, convention, scope)
    hw = get_hardware(hardware)
    if budget is None:
        budget = width_model.target_cost(width_model.seed_widths, resource, hw)
    return expand_entry(graph, width_model, morphed[0], resource, budget, hw)


def export(model: str | ChannelGraph, checkpoint: str | Path, multiplier: float | None = None,
           model_out: str | Path | None = None, threshold: float = DEFAULT_THRESHOLD,
           convention: str = "physical", scope: Any = None) -> dict[str, Any]:
    """Widths per source op (morph-net's StructureExporter form) and the per-layer table;
    with ``model_out`` (a spec that can be rebuilt: zoo name or Keras file), also a rebuilt
    model file and its parameter count beside the prediction."""
    from morphscope.analyzers.morph import export_plan, plan_totals, source_op_widths
    from morphscope.analyzers.widths import apply_multiplier
    from morphscope.exporters.writers import layer_table

    graph, width_model, structures, morphed = _analysis(model, [checkpoint], threshold, convention, scope)
    m = morphed[0]
    expanded = m.widths if multiplier is None else apply_multiplier(width_model.spaces, m.widths, multiplier)
    out = {"widths": source_op_widths(graph, width_model, expanded),
           "table": layer_table(graph, width_model, m.widths, expanded)}
    if model_out is not None:
        from morphscope.exporters.export import write_rebuilt_model
        from morphscope.exporters.files import check_targets
        from morphscope.importers.load import load_framework_model

        if isinstance(model, ChannelGraph):
            raise TypeError("model_out needs the model's spec (a zoo name or a Keras file), not a graph")
        check_targets({"model_out": model_out}, {"model": model, "checkpoint": checkpoint})
        plan = export_plan(graph, width_model, m, multiplier, structures[0].gammas, threshold)
        out["model_params"] = write_rebuilt_model(load_framework_model(model, graph.input_shape),
                                                  graph, width_model, plan, model_out)
        out["predicted_params"] = plan_totals(width_model, plan)["params"]
    return out
