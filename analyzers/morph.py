"""From a learned structure to widths, costs and an exportable plan.

``morph(model, structure, threshold)`` gives per-space alive widths (from gammas, grouped by
max |gamma|, or straight from a morph-net alive file). ``export_plan`` turns widths into what
a rebuilt model will have: residual branches left with an empty space are removed (their ops
cost nothing), and any other space at zero width is kept at one channel, with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from morphscope.analyzers.alive import DEFAULT_THRESHOLD, Topology, alive_widths, gamma_masks, topology_report
from morphscope.analyzers.spaces import is_source_kind
from morphscope.analyzers.group_lasso import group_lasso_masks
from morphscope.analyzers.widths import WidthModel, apply_multiplier
from morphscope.graph import ChannelGraph


@dataclass(frozen=True)
class Morphed:
    """One checkpoint's structure: alive widths per space (and masks when from gammas)."""

    label: str
    widths: np.ndarray
    masks: tuple[np.ndarray, ...] | None
    notes: tuple[str, ...] = ()


def morph(model: WidthModel, structure: Any, threshold: float = DEFAULT_THRESHOLD,
          label: str | None = None) -> Morphed:
    """Alive widths for a :class:`~morphscope.importers.checkpoints.LearnedStructure` (plain fields read:
    ``source``, ``gammas``, ``kernels`` (group lasso), ``alive_counts``, ``notes``)."""
    widths, masks, notes = alive_structure(model, structure.gammas, structure.kernels,
                                           structure.alive_counts, threshold)
    return Morphed(label or structure.source, widths, masks, tuple(structure.notes) + notes)


def alive_structure(model: WidthModel, gammas: Mapping[str, np.ndarray] | None = None,
                    kernels: Mapping[str, np.ndarray] | None = None,
                    alive_counts: Mapping[str, int] | None = None,
                    threshold: float = DEFAULT_THRESHOLD,
                    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None, tuple[str, ...]]:
    """``(alive widths per space, masks or None, notes)`` from whichever a structure holds:
    bn scales (grouped max |gamma| > threshold), kernels (group lasso) or a morph-net alive
    file's counts."""
    if gammas or kernels:
        masks = (gamma_masks(model.spaces, gammas, threshold) if gammas
                 else group_lasso_masks(model.spaces, kernels, threshold))
        return alive_widths(masks), tuple(masks), ()
    widths, notes = widths_from_counts(model, alive_counts or {})
    return widths, None, notes


def widths_from_counts(model: WidthModel, alive_counts: dict[str, int]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Per-space widths from alive counts by source op (a morph-net alive file): the seed's
    widths, each counted op's space set to its count; pinned spaces keep their width."""
    spaces = model.spaces
    widths = model.seed_widths.copy()
    notes = []
    assigned: dict[int, int] = {}
    for op, count in alive_counts.items():
        layout = spaces.op_out.get(op, ())
        if len(layout) > 1:  # cut into slices tied to other ops: their own counts set them
            notes.append(f"{op}: its {len(layout)} slices are tied to other ops; their counts used")
            continue
        for seg in layout:
            if spaces.pinned[seg.space]:
                notes.append(f"{op}: pinned ({spaces.pin_reasons.get(seg.space)}), kept at full width")
                continue
            if seg.space in assigned and assigned[seg.space] != count:
                notes.append(f"{op}: tied ops disagree ({assigned[seg.space]} vs {count}); the larger kept")
            assigned[seg.space] = max(count, assigned.get(seg.space, 0))
    for space, count in assigned.items():
        widths[space] = count
    return widths, tuple(notes)


def source_op_widths(graph: ChannelGraph, model: WidthModel, widths: np.ndarray) -> dict[str, int]:
    """Output channels of every source op (conv other than depthwise, linear) for ``widths``,
    in graph order (from the compiled model: no graph walk)."""
    return model.source_widths(widths)


@dataclass(frozen=True)
class ExportPlan:
    """Widths a rebuilt model gets, the ops removed with dead residual branches, and notes."""

    widths: np.ndarray
    removed_ops: frozenset[str]
    removed_blocks: tuple[tuple[str, str, str], ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    topology: Topology | None = None

    def op_keep(self, names: tuple[str, ...]) -> np.ndarray:
        """1.0 for ops the rebuilt model keeps, 0.0 for removed ones (rows of ``names``)."""
        return np.array([0.0 if n in self.removed_ops else 1.0 for n in names])


def export_plan(graph: ChannelGraph, model: WidthModel, morphed: Morphed,
                multiplier: float | None = None, gammas: dict[str, np.ndarray] | None = None,
                threshold: float = DEFAULT_THRESHOLD) -> ExportPlan:
    """What to rebuild: ``morphed`` widths, optionally expanded by ``multiplier``.

    A residual branch with an empty inner space (or whose closing bn has every |gamma| at or
    under the threshold) is removed; other spaces at zero width keep one channel.
    """
    widths = morphed.widths.copy()
    topology = topology_report(graph, model.spaces, widths, gammas, threshold)
    removed, blocks = set(), []
    for add, branch_end, reason in topology.removable_blocks:
        removed.update(model.spaces.residual_branches[add][branch_end])
        blocks.append((add, branch_end, reason))
    removed_spaces = {s.space for op in removed for s in model.spaces.op_out.get(op, ())
                      if is_source_kind(graph[op])}
    kept_spaces = {s.space for name in model.costs.names if name not in removed
                   for s in model.spaces.op_out.get(name, ())}
    notes = []
    for space in np.flatnonzero(widths == 0):
        if space in kept_spaces or space not in removed_spaces:
            widths[space] = 1
            notes.append(f"{model.spaces.name_of(int(space))}: every channel dead but its "
                         "layer cannot be removed here; kept at 1 channel")
    if multiplier is not None:
        widths = apply_multiplier(model.spaces, widths, multiplier)
    for add, branch_end, reason in blocks:
        notes.append(f"residual branch into {add} (ending at {branch_end}) removed: {reason}")
    return ExportPlan(widths, frozenset(removed), tuple(blocks), tuple(notes), topology)


def plan_totals(model: WidthModel, plan: ExportPlan, hardware=None) -> dict[str, Any]:
    """Totals of the rebuilt model: the plan's widths, removed ops costing nothing."""
    return model.totals(plan.widths, hardware, op_keep=plan.op_keep(model.costs.names))
