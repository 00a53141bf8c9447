"""Seed vs morphed structures side by side: the plain data behind the explorer's views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from morphscope.analyzers.alive import DEFAULT_THRESHOLD
from morphscope.analyzers.hardware import Hardware
from morphscope.analyzers.morph import alive_structure, source_op_widths
from morphscope.analyzers.widths import WidthModel, expanded_widths, multiplier_curve, solve_multiplier
from morphscope.graph import ChannelGraph

METRICS = ("flops", "params", "size", "latency_s")


@dataclass(frozen=True)
class StructureView:
    """One labelled structure at the current threshold and width factor."""

    label: str
    alive: np.ndarray  # per-space alive widths
    expanded: np.ndarray  # alive widths after the width multiplier
    alive_totals: dict[str, Any]
    expanded_totals: dict[str, Any]

    @property
    def is_expanded(self) -> bool:
        """The multiplier (or rounding) changes some width: expanded differs from alive."""
        return not np.array_equal(self.alive, self.expanded)


def structure_widths(model: WidthModel, gammas: dict[str, np.ndarray] | None,
                     alive_counts: dict[str, int] | None, threshold: float = DEFAULT_THRESHOLD,
                     kernels: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Alive widths from gammas (or group-lasso kernels) at ``threshold``, or from a
    morph-net alive file's counts (:func:`~morphscope.analyzers.morph.alive_structure`)."""
    return alive_structure(model, gammas, kernels, alive_counts, threshold)[0]


def view_structure(model: WidthModel, label: str, alive: np.ndarray, factor: float,
                   hardware: Hardware, round_to: int = 1) -> StructureView:
    """Totals of a structure as learned and after the width multiplier ``factor`` (widths
    then rounded up to multiples of ``round_to``)."""
    expanded = expanded_widths(model.spaces, alive, factor, round_to)
    return StructureView(label, alive, expanded, model.totals(alive, hardware),
                         model.totals(expanded, hardware))


def metrics_rows(seed: dict[str, Any], views: list[StructureView]) -> list[dict[str, Any]]:
    """Rows for the metrics table: each resource and its ratio to the seed; a structure's
    expanded row only where the multiplier changes its widths."""
    rows = [{"structure": "seed", **{m: seed[m] for m in METRICS}, **{f"{m} vs seed": 1.0 for m in METRICS}}]
    for view in views:
        shown = (("alive", view.alive_totals), ("expanded", view.expanded_totals))[:2 if view.is_expanded else 1]
        for suffix, totals in shown:
            rows.append({"structure": f"{view.label} ({suffix})", **{m: totals[m] for m in METRICS},
                         **{f"{m} vs seed": totals[m] / seed[m] if seed[m] else float("nan")
                            for m in METRICS}})
    return rows


def layer_widths(graph: ChannelGraph, model: WidthModel, views: list[StructureView]) -> dict[str, Any]:
    """Per source op, in graph order: seed, alive and expanded widths, seed MACs and params."""
    seed_widths = source_op_widths(graph, model, model.seed_widths)
    seed_ops = model.per_op(model.seed_widths)
    rows = [model.costs.index[n] for n in seed_widths]
    return {
        "layers": list(seed_widths),
        "seed": list(seed_widths.values()),
        "macs": [int(seed_ops["macs"][i]) for i in rows],
        "params": [int(seed_ops["params"][i]) for i in rows],
        "structures": {v.label: {"alive": list(source_op_widths(graph, model, v.alive).values()),
                                 "expanded": list(source_op_widths(graph, model, v.expanded).values())}
                       for v in views},
    }


def gamma_magnitudes(gammas: dict[str, np.ndarray], layer: str | None = None) -> np.ndarray:
    """|gamma| of one bn op, or of every bn op when ``layer`` is None (for the histogram)."""
    chosen = [gammas[layer]] if layer else list(gammas.values())
    return np.abs(np.concatenate(chosen)) if chosen else np.zeros(0)


def tradeoff_curves(model: WidthModel, views: list[StructureView], factors: np.ndarray,
                    hardware: Hardware, round_to: int = 1) -> dict[str, dict[str, np.ndarray]]:
    """FLOPs, params and latency under a width multiplier: the seed (uniform scaling) and each
    structure (its own widths scaled), widths rounded up to multiples of ``round_to``."""
    curves = {"seed": multiplier_curve(model, model.seed_widths, factors, hardware, round_to)}
    for view in views:
        curves[view.label] = multiplier_curve(model, view.alive, factors, hardware, round_to)
    return curves


def matching_factor(model: WidthModel, alive: np.ndarray, target: str, hardware: Hardware,
                    round_to: int = 1) -> float:
    """The width factor at which a structure costs what the seed does in ``target``."""
    return solve_multiplier(model, alive, target, hardware=hardware, round_to=round_to)
