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

from morphscope.analyzers.alive import (DEFAULT_THRESHOLD, Topology, alive_widths, gamma_masks, group_scores,
                                        topology_report)
from morphscope.analyzers.spaces import ChannelSpaces, is_source_kind
from morphscope.analyzers.group_lasso import group_lasso_masks
from morphscope.analyzers.widths import WidthModel, expanded_widths
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
    """Widths a rebuilt model gets, the ops removed with dead residual branches, and notes.

    ``kept``: per space, which seed channels the rebuilt model keeps (alive channels first,
    then the best-scored, so a width rounded up or kept at one channel takes its strongest
    dead channels), for copying weights; None where a space grows past its seed width or the
    structure has neither masks nor scores.
    """

    widths: np.ndarray
    removed_ops: frozenset[str]
    removed_blocks: tuple[tuple[str, str, str], ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    topology: Topology | None = None
    kept: tuple[np.ndarray, ...] | None = None

    def op_keep(self, names: tuple[str, ...]) -> np.ndarray:
        """1.0 for ops the rebuilt model keeps, 0.0 for removed ones (rows of ``names``)."""
        return np.array([0.0 if n in self.removed_ops else 1.0 for n in names])


def export_plan(graph: ChannelGraph, model: WidthModel, morphed: Morphed,
                multiplier: float | None = None, gammas: dict[str, np.ndarray] | None = None,
                threshold: float = DEFAULT_THRESHOLD, round_to: int = 1,
                remove_blocks: bool = True) -> ExportPlan:
    """What to rebuild: ``morphed`` widths, optionally expanded by ``multiplier`` and rounded
    up to multiples of ``round_to`` (:func:`~morphscope.analyzers.widths.expanded_widths`).

    A residual branch with an empty inner space (or whose closing bn has every |gamma| at or
    under the threshold) is removed (with ``remove_blocks``; a rewritten ``.pt2`` program
    keeps every op); other spaces at zero width keep one channel.
    """
    widths = morphed.widths.copy()
    topology = topology_report(graph, model.spaces, widths, gammas, threshold)
    removed, blocks = set(), []
    for add, branch_end, reason in topology.removable_blocks if remove_blocks else ():
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
    widths = expanded_widths(model.spaces, widths, multiplier, round_to)
    for add, branch_end, reason in blocks:
        notes.append(f"residual branch into {add} (ending at {branch_end}) removed: {reason}")
    scores = group_scores(model.spaces, gammas) if gammas else {}
    kept = kept_channels(model.spaces, widths, morphed.masks, scores) \
        if morphed.masks is not None or scores else None
    return ExportPlan(widths, frozenset(removed), tuple(blocks), tuple(notes), topology, kept)


def kept_channels(spaces: ChannelSpaces, widths: np.ndarray, masks: tuple[np.ndarray, ...] | None,
                  scores: Mapping[int, np.ndarray]) -> tuple[np.ndarray, ...] | None:
    """Per space, a mask of the ``widths[space]`` seed channels to keep: alive channels (by
    ``masks``) first, then by group score, then by index; spaces with a quantum q keep
    ``width / q`` channels in each of their q groups. None if a width exceeds its seed's.

    Examples
    --------
    Space 0 (5 channels, alive 1 and 3) keeps 3: the alive two and the best-scored dead one.

    >>> s = ChannelSpaces(np.array([5]), np.array([False]), {}, np.array([1]), {}, {}, {}, {})
    >>> mask = np.array([False, True, False, True, False])
    >>> kept = kept_channels(s, np.array([3.0]), (mask,), {0: np.array([.5, .9, .1, .8, .3])})
    >>> np.flatnonzero(kept[0]).tolist()
    [0, 1, 3]
    """
    kept = []
    for space, size in enumerate(spaces.sizes.tolist()):
        width = int(widths[space])
        if width > size:
            return None
        q = int(spaces.quantum[space])
        alive = masks[space] if masks is not None else np.zeros(size, dtype=bool)
        score = scores.get(space, np.zeros(size))
        rank = np.lexsort((np.arange(size // q)[None, :].repeat(q, 0), -score.reshape(q, -1),
                           -alive.reshape(q, -1).astype(np.int8)), axis=-1)
        chosen = np.zeros((q, size // q), dtype=bool)
        np.put_along_axis(chosen, rank[:, :width // q], True, axis=1)
        kept.append(chosen.reshape(-1))
    return tuple(kept)


def plan_totals(model: WidthModel, plan: ExportPlan, hardware=None) -> dict[str, Any]:
    """Totals of the rebuilt model: the plan's widths, removed ops costing nothing."""
    return model.totals(plan.widths, hardware, op_keep=plan.op_keep(model.costs.names))
