"""Costs of any per-space widths, the width multiplier and its solver (DESIGN sections 4-5).

:func:`compile_width_model` walks the graph once (cost rules + channel spaces) into arrays;
after that, the cost of one width vector or of a hundred (a curve) is a matrix product and
the bilinear formula, with no graph walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from morphscope.analyzers.cost import CostModel, compile_costs, per_op_costs, totals_of
from morphscope.analyzers.conventions import (DEFAULT_CONVENTION, Scope, channel_rules, get_convention,
                                              restrict_spaces)
from morphscope.analyzers.hardware import DEFAULT_HARDWARE, Hardware, get_hardware
from morphscope.analyzers.resources import BASES, get_resource
from morphscope.analyzers.spaces import ChannelSpaces, build_channel_spaces, space_matrices
from morphscope.errors import MorphScopeError
from morphscope.graph import ChannelGraph

SOLVE_TOLERANCE = 1e-4
CHUNK_ELEMENTS = 1 << 20  # ops x width vectors evaluated at once (8 MB per float64 array)


@dataclass(frozen=True)
class WidthModel:
    """A graph compiled for width arithmetic: everything a slider move needs, no graph walk.

    ``m_in @ widths`` and ``m_out @ widths`` give every op's input and output channels for
    per-space ``widths`` (shape (n_spaces,) or (n_spaces, k) for k width vectors at once);
    ``m_source @ widths`` the output channels of each of ``spaces.source_ops``. The matrices
    are sparse (CSR): memory grows with the ops, not with ops x spaces.
    """

    costs: CostModel
    spaces: ChannelSpaces
    m_in: sparse.csr_array
    m_out: sparse.csr_array
    m_source: sparse.csr_array

    @property
    def seed_widths(self) -> np.ndarray:
        return self.spaces.sizes.astype(np.float64)

    def per_op(self, widths: np.ndarray, op_keep: np.ndarray | None = None,
               bases: tuple[str, ...] = BASES) -> dict[str, np.ndarray]:
        """Base costs per op (rows follow ``costs.names``); ``op_keep`` zeroes removed ops."""
        widths = np.asarray(widths, dtype=np.float64)
        per_op = per_op_costs(self.costs, self.m_in @ widths, self.m_out @ widths, bases)
        if op_keep is not None:
            keep = op_keep[:, None] if np.ndim(widths) == 2 else op_keep
            per_op = {r: v * keep for r, v in per_op.items()}
        return per_op

    def totals(self, widths: np.ndarray, hardware: Hardware | None = None,
               op_keep: np.ndarray | None = None) -> dict[str, Any]:
        """Totals for one width vector (ints) or k vectors (int arrays of length k).

        Keys: ``macs``, ``flops`` (= 2 x macs), ``params`` (framework rule, training-only
        weights included), ``size`` (conv/linear kernels), ``bytes_moved``, ``latency_s``
        (roofline on ``hardware``, default V100).
        """
        hardware = hardware or get_hardware(DEFAULT_HARDWARE)
        return self._by_columns(widths, lambda w: totals_of(self.costs, self.per_op(w, op_keep), hardware))

    def target_cost(self, widths: np.ndarray, target: str, hardware: Hardware | None = None):
        """One resource of :data:`~morphscope.analyzers.resources.RESOURCES` (``flops``,
        ``params``, ``size``, ``latency`` in seconds, ...), computing only what it needs."""
        resource = get_resource(target)
        hardware = hardware or get_hardware(DEFAULT_HARDWARE)
        return self._by_columns(widths, lambda w: resource.total(
            self.costs, self.per_op(w, bases=resource.bases), hardware))

    def _by_columns(self, widths: np.ndarray, evaluate: Any) -> Any:
        """``evaluate(widths)``; k width vectors (columns) go in chunks, so the per-op
        temporaries stay near :data:`CHUNK_ELEMENTS` numbers whatever the model's size."""
        widths = np.asarray(widths, dtype=np.float64)
        step = max(1, CHUNK_ELEMENTS // max(1, len(self.costs.names)))
        if widths.ndim != 2 or widths.shape[1] <= step:
            return evaluate(widths)
        parts = [evaluate(widths[:, i:i + step]) for i in range(0, widths.shape[1], step)]
        if not isinstance(parts[0], dict):
            return np.concatenate(parts)
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def source_widths(self, widths: np.ndarray) -> dict[str, int]:
        """Output channels of every source op (``spaces.source_ops``) for ``widths``."""
        counts = self.m_source @ np.asarray(widths, dtype=np.float64)
        return dict(zip(self.spaces.source_ops, np.rint(counts).astype(np.int64).tolist()))


def compile_width_model(graph: ChannelGraph, convention: str = DEFAULT_CONVENTION,
                        scope: Scope | None = None) -> WidthModel:
    """Cost rules and channel spaces of ``graph``, compiled once into arrays.

    ``convention`` picks the counting (``physical`` or ``morph-net``) and ``scope`` which
    outputs may be pruned and which part is analysed (:mod:`morphscope.analyzers.conventions`).
    """
    rules, scope = get_convention(convention), scope or Scope()
    costs = compile_costs(graph, rules.cost_rules)
    spaces = restrict_spaces(build_channel_spaces(graph, channel_rules(rules, scope)), graph, scope)
    matrices = space_matrices(spaces, costs.names)
    m_source = space_matrices(spaces, spaces.source_ops).m_out
    return WidthModel(costs, spaces, matrices.m_in, matrices.m_out, m_source)


def apply_multiplier(spaces: ChannelSpaces, widths: np.ndarray, factor: float | np.ndarray) -> np.ndarray:
    """Scale every prunable space of width n > 0 to ``max(q, floor(factor*n/q)*q)``.

    ``q`` is the space's quantum (1, or the groups of a grouped conv using it). Dead spaces
    (n = 0) stay dead; pinned spaces keep their width. ``factor`` may be an array of k factors:
    the result then has shape (n_spaces, k).

    Examples
    --------
    At 1.5, a layer shrunk from 100 to 10 grows to 15 and one shrunk to 80 grows to 120:

    >>> import numpy as np
    >>> from morphscope.analyzers.spaces import ChannelSpaces
    >>> s = ChannelSpaces(np.array([200, 100]), np.array([False, False]), {},
    ...                   np.array([1, 1]), {}, {}, {}, {})
    >>> apply_multiplier(s, np.array([10.0, 80.0]), 1.5).tolist()
    [15.0, 120.0]
    """
    widths = np.asarray(widths, dtype=np.float64)
    factor = np.asarray(factor, dtype=np.float64)
    w = widths[:, None] if factor.ndim else widths
    q = spaces.quantum[:, None] if factor.ndim else spaces.quantum
    pinned = spaces.pinned[:, None] if factor.ndim else spaces.pinned
    grown = np.maximum(q, np.floor(w * factor / q + 1e-9) * q)
    return np.where(pinned | (w == 0), w, grown)


def expanded_widths(spaces: ChannelSpaces, widths: np.ndarray, factor: float | np.ndarray | None = None,
                    round_to: int = 1) -> np.ndarray:
    """``widths`` times ``factor`` (:func:`apply_multiplier`; None: unchanged), then rounded up
    to multiples of ``round_to`` (:func:`round_widths`): the one way a structure's widths
    become the widths a rebuilt model gets."""
    if factor is not None:
        widths = apply_multiplier(spaces, widths, factor)
    return round_widths(spaces, widths, round_to)


def round_widths(spaces: ChannelSpaces, widths: np.ndarray, round_to: int = 1) -> np.ndarray:
    """Round every pruned width up to a multiple of ``round_to`` (hardware alignment).

    A space is rounded when it is prunable (not pinned), not dead (width > 0) and its width
    differs from the seed's; it becomes the next multiple of ``lcm(round_to, quantum)`` (so
    grouped convs and GroupNorm keep equal groups), but never wider than the seed when it was
    not (a narrowed space at most returns to its seed width). A space is one tied group, so
    every layer of a group gets the same width. ``widths`` may have shape (n_spaces, k).

    Raises
    ------
    MorphScopeError
        If ``round_to`` is not a whole number >= 1.

    Examples
    --------
    Seed widths 64 and 61, pruned to 43 and 60, rounded to multiples of 8: 43 -> 48, and 60
    would be 64, over its seed width 61, so it stays at the seed's 61:

    >>> import numpy as np
    >>> from morphscope.analyzers.spaces import ChannelSpaces
    >>> s = ChannelSpaces(np.array([64, 61]), np.array([False, False]), {},
    ...                   np.array([1, 1]), {}, {}, {}, {})
    >>> round_widths(s, np.array([43.0, 60.0]), 8).tolist()
    [48.0, 61.0]
    """
    if isinstance(round_to, bool) or int(round_to) != round_to or round_to < 1:
        raise MorphScopeError(f"round_to {round_to!r}: choose a whole number >= 1 (e.g. 8)")
    widths = np.asarray(widths, dtype=np.float64)
    if round_to == 1:
        return widths
    column = (lambda a: a[:, None]) if widths.ndim == 2 else (lambda a: a)
    step = column(np.lcm(spaces.quantum.astype(np.int64), int(round_to)).astype(np.float64))
    seed = column(spaces.sizes.astype(np.float64))
    rounded = np.ceil(widths / step - 1e-9) * step
    rounded = np.where(widths <= seed, np.minimum(rounded, seed), rounded)
    keep = column(spaces.pinned) | (widths == 0) | (widths == seed)
    return np.where(keep, widths, rounded)


def solve_multiplier(model: WidthModel, widths: np.ndarray, target: str = "flops",
                     budget: float | None = None, hardware: Hardware | None = None,
                     round_to: int = 1) -> float:
    """The largest factor w (to 1e-4) with ``cost(round(apply(widths, w))) <= budget``.

    The default budget is the seed's own cost of ``target`` (the paper's expand step);
    ``round_to`` rounds the expanded widths as :func:`round_widths` does before costing.
    Evaluates 64 factors per step in one vectorized call, so it needs about four steps.

    Raises
    ------
    MorphScopeError
        If even the smallest widths (every space at its quantum) exceed the budget.
    """
    get_resource(target)
    if budget is None:
        budget = model.target_cost(model.seed_widths, target, hardware)

    def cost(factors: np.ndarray) -> np.ndarray:
        return np.asarray(model.target_cost(expanded_widths(model.spaces, widths, factors, round_to),
                                            target, hardware))

    lo, hi = 0.0, 1.0
    while cost(np.array([hi]))[0] <= budget:  # grow until infeasible
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return lo
    if lo == 0.0 and cost(np.array([1e-9]))[0] > budget:
        raise MorphScopeError(f"no width multiplier meets the {target} budget {budget:g}: "
                              "even one channel per space costs more")
    while hi - lo > SOLVE_TOLERANCE:
        grid = np.linspace(lo, hi, 66)[1:-1]
        feasible = cost(grid) <= budget
        if feasible.all():
            lo = grid[-1]
        elif not feasible.any():
            hi = grid[0]
        else:
            first_bad = int(np.argmin(feasible))
            lo, hi = (grid[first_bad - 1] if first_bad else lo), grid[first_bad]
    return float(lo)


def multiplier_curve(model: WidthModel, widths: np.ndarray, factors: np.ndarray,
                     hardware: Hardware | None = None, round_to: int = 1) -> dict[str, np.ndarray]:
    """Totals of ``round(apply(widths, f))`` for every factor f, in one vectorized evaluation."""
    factors = np.asarray(factors, dtype=np.float64)
    return model.totals(expanded_widths(model.spaces, widths, factors, round_to), hardware)
