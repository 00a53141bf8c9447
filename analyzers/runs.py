"""Training runs as numbers: widths, layer shares and costs at every logged step.

A run's structures come as op name -> alive count maps (one per logged step, as
``StructureLogger`` and morph-net's StructureExporter write them). Everything here is computed
for every step, vectorized; what a chart draws is thinned by :func:`thin_indices`, never what
is computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from morphscope.analyzers.hardware import Hardware
from morphscope.analyzers.morph import source_op_widths, widths_from_counts
from morphscope.analyzers.widths import WidthModel
from morphscope.graph import ChannelGraph


def widths_per_step(model: WidthModel, counts_per_step: Sequence[Mapping[str, int]]) -> np.ndarray:
    """Per-space widths at every step: an int array of shape (steps, spaces).

    Each step's counts are read as a morph-net alive file (see
    :func:`~morphscope.analyzers.morph.widths_from_counts`): counted source ops set their space,
    everything else keeps the seed width.
    """
    out = np.empty((len(counts_per_step), model.spaces.n_spaces), dtype=np.int64)
    for i, counts in enumerate(counts_per_step):
        out[i] = widths_from_counts(model, dict(counts))[0]
    return out


def layer_matrix(graph: ChannelGraph, model: WidthModel) -> tuple[tuple[str, ...], np.ndarray]:
    """Source ops in graph order (input to output) and the (ops, spaces) matrix that turns
    per-space widths into each op's output channels: ``widths @ matrix.T``."""
    names = tuple(source_op_widths(graph, model, model.seed_widths))
    matrix = np.zeros((len(names), model.spaces.n_spaces), dtype=np.int64)
    for row, name in enumerate(names):
        for seg in model.spaces.op_out.get(name, ()):
            matrix[row, seg.space] += seg.repeat
    return names, matrix


def layer_shares(graph: ChannelGraph, model: WidthModel, widths: np.ndarray) -> dict[str, Any]:
    """Each source op's output channels as a share of the seed's, at every step.

    Parameters
    ----------
    widths : numpy.ndarray
        (steps, spaces) widths, e.g. from :func:`widths_per_step`.

    Returns
    -------
    dict
        ``layers`` (names, input to output), ``seed`` (channels per layer) and ``shares``, a
        float array of shape (layers, steps) in [0, 1] (1 = the seed's width).

    Examples
    --------
    A layer at 7 of its 14 seed channels has share 0.5.
    """
    names, matrix = layer_matrix(graph, model)
    seed = matrix @ model.seed_widths
    channels = matrix @ np.asarray(widths, dtype=np.int64).T  # (layers, steps)
    shares = channels / np.maximum(seed, 1)[:, None]
    return {"layers": list(names), "seed": seed.astype(int).tolist(), "shares": shares}


def costs_per_step(model: WidthModel, widths: np.ndarray, hardware: Hardware | None = None) -> dict[str, np.ndarray]:
    """Totals (``flops``, ``params``, ``size``, ``latency_s``, ...) of every step's widths, in one
    vectorized evaluation: arrays of length steps."""
    widths = np.asarray(widths, dtype=np.int64)
    if len(widths) == 0:
        return {}
    return {k: np.atleast_1d(np.asarray(v)) for k, v in model.totals(widths.T, hardware).items()}


def thin_indices(n: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` indices of ``range(n)``, evenly spread, first and last kept: what a
    chart draws of a long run (the numbers themselves are computed for every step)."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


# What StructureLogger itself records in each cost.jsonl line; anything else is a user metric.
LOGGER_FIELDS = ("step", "target", "cost", "loss", "strength", "budget")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def metric_names(log: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric quantities the log records besides the logger's own fields (user metrics)."""
    names: dict[str, None] = {}
    for record in log:
        for key, value in record.items():
            if key not in LOGGER_FIELDS and _number(value):
                names.setdefault(key)
    return list(names)


def logged_series(log: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of the records holding a finite number under ``key`` (e.g. the
    strength a targeted regularizer steered), in log order."""
    pairs = [(record["step"], float(record[key])) for record in log
             if _number(record.get(key)) and _number(record.get("step"))]
    return (np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.float64))


def final_metric(log: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    """The last finite value the log records for ``metric``, or None."""
    for record in reversed(log):
        if _number(record.get(metric)):
            return float(record[metric])
    return None


def log_target(log: Sequence[Mapping[str, Any]], default: str = "flops") -> str:
    """The resource a run's regularizer targeted, as its log names it (morph-net runs, which
    log none: ``default``)."""
    for record in reversed(log):
        if isinstance(record.get("target"), str):
            return record["target"]
    return default
