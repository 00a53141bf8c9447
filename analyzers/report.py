"""Per-layer rows and whole-model totals as plain data (what the CLI prints and the app shows)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from morphscope.analyzers.alive import consistency_report, topology_report
from morphscope.analyzers.cost import CostModel, compile_costs, seed_costs, totals_of
from morphscope.analyzers.conventions import DEFAULT_CONVENTION, get_convention
from morphscope.analyzers.hardware import DEFAULT_HARDWARE, HARDWARE, Hardware
from morphscope.analyzers.resources import RESOURCES, get_resource
from morphscope.analyzers.morph import Morphed, source_op_widths
from morphscope.analyzers.widths import WidthModel, expanded_widths, solve_multiplier
from morphscope.graph import ChannelGraph, Kind

CONVENTION = ("MACs: multiply-accumulates of conv, linear and matrix products, batch 1; bias, "
              "bn, activations and pooling excluded (= torch FlopCounterMode total / 2). "
              "FLOPs = 2 x MACs. size: conv/linear kernel weights (morph-net). params: the "
              "framework's own count (Keras includes bn moving statistics).")


@dataclass(frozen=True)
class LayerRow:
    """One op of the per-layer table; ``macs`` and ``params`` at the widths it was built for."""

    name: str
    kind: str
    in_channels: int | None
    out_channels: int | None
    kernel: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    out_spatial: tuple[int, ...] | None
    macs: int
    params: int


def layer_rows(graph: ChannelGraph, model: CostModel, per_op: dict[str, np.ndarray],
               every_op: bool = False) -> list[LayerRow]:
    """The table rows: ops that compute or own parameters (every op with ``every_op``)."""
    rows = []
    for i, name in enumerate(model.names):
        attrs = graph[name]
        macs = int(round(float(per_op["macs"][i])))
        params = int(round(float(per_op["params"][i])))
        if not (every_op or macs or params):
            continue
        rows.append(LayerRow(name, attrs["kind"].value, attrs.get("in_channels"),
                             attrs.get("out_channels"), attrs.get("kernel"), attrs.get("stride"),
                             attrs.get("out_spatial"), macs, params))
    return rows


def totals_dict(model: CostModel, per_op: dict[str, np.ndarray], graph: ChannelGraph) -> dict[str, Any]:
    """Totals with trainable split and roofline latency on every named hardware (seconds)."""
    totals = totals_of(model, per_op)
    trainable = sum(a.get("trainable_params", 0) for _, a in graph.ops()) + model.detached_params
    latency = {hw: RESOURCES["latency"].total(model, per_op, spec) for hw, spec in HARDWARE.items()}
    return {**totals, "trainable_params": trainable,
            "non_trainable_params": totals["params"] - trainable, "latency_s": latency}


def pinned_ops(graph: ChannelGraph) -> list[str]:
    """Opaque ops: their channels are pinned (never pruned), listed so nothing is assumed."""
    return graph.of_kind(Kind.OPAQUE)


def seed_report(graph: ChannelGraph, every_op: bool = False,
                convention: str = DEFAULT_CONVENTION) -> dict[str, Any]:
    """The seed (all channels alive) report as one JSON-ready dict, counted by ``convention``
    (``physical`` or ``morph-net``, :mod:`morphscope.analyzers.conventions`).

    Returns
    -------
    dict
        ``model``, ``framework``, ``input_shape`` (C, H, W), ``convention``, ``seed`` (totals:
        ``macs``, ``flops``, ``params``, ``size``, ``bytes_moved``, ``trainable_params``,
        ``non_trainable_params``, ``latency_s`` per hardware), ``layers`` (rows), ``opaque``
        (pinned op names), ``detached_params`` (training-only weights by module) and
        ``notes`` (how the graph was captured, when it matters).
    """
    counting = get_convention(convention)
    model = compile_costs(graph, counting.cost_rules)
    per_op = seed_costs(model)
    return {
        "model": graph.name,
        "framework": graph.framework,
        "input_shape": list(graph.input_shape),
        "convention": CONVENTION if convention == DEFAULT_CONVENTION else f"{CONVENTION} "
                      f"Counted by the {convention} convention: {counting.description}.",
        "seed": totals_dict(model, per_op, graph),
        "layers": [asdict(r) for r in layer_rows(graph, model, per_op, every_op)],
        "opaque": pinned_ops(graph),
        "detached_params": graph.detached_params,
        "notes": graph.notes,
    }


def structure_entry(graph: ChannelGraph, model: WidthModel, structure: Any, morphed: Morphed,
                    threshold: float, hardware: Hardware | None = None) -> dict[str, Any]:
    """One checkpoint's alive totals, widths per source op, inconsistent groups and topology
    (the ``morphed`` entries of ``morphscope report --json``); ``latency_s`` is the roofline on
    ``hardware`` (default V100), named in ``hardware``."""
    hardware = hardware or HARDWARE[DEFAULT_HARDWARE]
    totals = model.totals(morphed.widths, hardware)
    topology = topology_report(graph, model.spaces, morphed.widths, structure.gammas, threshold)
    return {
        "checkpoint": morphed.label, "hardware": hardware.name, "latency_prediction": hardware.prediction,
        **{k: totals[k] for k in ("macs", "flops", "params", "size", "latency_s")},
        "widths": source_op_widths(graph, model, morphed.widths),
        "inconsistent_groups": [asdict(g) for g in consistency_report(
            model.spaces, structure.gammas, threshold) if g.broken],
        "removable_blocks": [list(b) for b in topology.removable_blocks],
        "dead_towers": [list(t) for t in topology.dead_towers],
        "zero_width": list(topology.zero_width),
        "notes": list(morphed.notes),
    }


FACTOR_DECIMALS = 10_000  # expand's factor, as printed: 4 decimals


def expand_entry(graph: ChannelGraph, model: WidthModel, morphed: Morphed, resource: str,
                 budget: float, hardware: Hardware, round_to: int = 1) -> dict[str, Any]:
    """The largest width multiplier within ``budget`` of ``resource`` for one structure, with
    its alive and expanded totals and widths (the entries of ``morphscope expand --json``).
    With ``round_to`` > 1 the expanded widths are rounded up to its multiples before costing
    (:func:`~morphscope.analyzers.widths.round_widths`), and ``rounding_added`` says what the
    rounding adds over the same factor unrounded."""
    # Floored to the 4 decimals printed: feeding the printed factor back (export --multiplier)
    # gives exactly these widths, and a smaller factor never breaks the budget.
    factor = math.floor(solve_multiplier(model, morphed.widths, resource, budget, hardware, round_to)
                        * FACTOR_DECIMALS) / FACTOR_DECIMALS
    expanded = expanded_widths(model.spaces, morphed.widths, factor, round_to)
    alive_totals, expanded_totals = model.totals(morphed.widths, hardware), model.totals(expanded, hardware)
    return {
        "checkpoint": morphed.label, "resource": resource, "budget": budget, "factor": factor,
        "round_to": round_to,
        "cost": expanded_totals[get_resource(resource).key],
        "alive": {k: alive_totals[k] for k in ("flops", "params", "size")},
        "expanded": {k: expanded_totals[k] for k in ("flops", "params", "size")},
        "rounding_added": rounding_added(model, morphed.widths, factor, round_to, hardware),
        "widths": source_op_widths(graph, model, expanded),
    }


def rounding_added(model: WidthModel, widths: np.ndarray, factor: float | None, round_to: int,
                   hardware: Hardware | None = None) -> dict[str, int]:
    """``flops``, ``params`` and ``size`` that rounding to multiples of ``round_to`` adds to
    ``widths`` expanded by ``factor`` (None: not expanded); zeros when ``round_to`` is 1."""
    plain = model.totals(expanded_widths(model.spaces, widths, factor), hardware)
    rounded = model.totals(expanded_widths(model.spaces, widths, factor, round_to), hardware)
    return {k: int(rounded[k] - plain[k]) for k in ("flops", "params", "size")}
