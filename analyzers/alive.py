"""Alive channels from bn scales, group consistency and topology (DESIGN section 3).

A channel of a space is alive when its group score, the max of |gamma| over every bn that
scales it, is strictly above the threshold (morph-net's ``|gamma| > t``). A space no bn scales
keeps its full width; a pinned space is always fully alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from morphscope.analyzers.spaces import ChannelSpaces, is_source_kind
from morphscope.graph import ChannelGraph, Kind

DEFAULT_THRESHOLD = 1e-2


def group_scores(spaces: ChannelSpaces, gammas: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
    """Per space with at least one bn: max over its bn members of |gamma|, channel by channel
    (float32: gammas are float32 in both frameworks, and morph-net compares in float32).

    Parameters
    ----------
    gammas : mapping of bn op name to its scale vector
    """
    scores: dict[int, np.ndarray] = {}
    for space, cover in spaces.bn_cover.items():
        size = int(spaces.sizes[space])
        members = [np.abs(np.asarray(gammas[bn], dtype=np.float32)[offset:offset + size])
                   for bn, offset in cover if bn in gammas]
        if members:
            scores[space] = np.max(members, axis=0)
    return scores


def alive_masks(spaces: ChannelSpaces, scores: Mapping[int, np.ndarray],
                threshold: float = DEFAULT_THRESHOLD) -> list[np.ndarray]:
    """One boolean mask per space: ``score > threshold`` (strict); all True where unscored
    or pinned. Spaces with a quantum q (grouped convs) keep the same count in each of their
    q groups: the max count over groups, best-scored channels first."""
    masks = []
    for space, size in enumerate(spaces.sizes):
        score = scores.get(space)
        if score is None or spaces.pinned[space]:
            masks.append(np.ones(int(size), dtype=bool))
            continue
        mask = score > np.float32(threshold)  # in float32, as morph-net (gammas are float32)
        q = int(spaces.quantum[space])
        if q > 1:
            mask = _equalize_groups(score, mask, q)
        masks.append(mask)
    return masks


def _equalize_groups(score: np.ndarray, mask: np.ndarray, q: int) -> np.ndarray:
    per_group = mask.reshape(q, -1).sum(axis=1).max()
    order = np.argsort(-score.reshape(q, -1), axis=1, kind="stable")[:, :per_group]
    equal = np.zeros((q, score.size // q), dtype=bool)
    np.put_along_axis(equal, order, True, axis=1)
    return equal.reshape(-1)


def gamma_masks(spaces: ChannelSpaces, gammas: Mapping[str, np.ndarray],
                threshold: float = DEFAULT_THRESHOLD) -> list[np.ndarray]:
    """Alive masks per space straight from bn scales (group scores, then the threshold)."""
    return alive_masks(spaces, group_scores(spaces, gammas), threshold)


def alive_widths(masks: list[np.ndarray]) -> np.ndarray:
    """Alive channels per space (float array, ready for width arithmetic)."""
    return np.array([m.sum() for m in masks], dtype=np.float64)


@dataclass(frozen=True)
class GroupConsistency:
    """A tied group with two or more bn members and the channels they disagree on.

    ``broken`` are the channels alive for some members and dead for others: pruning each bn
    on its own (without grouping) would cut them from one layer and keep them in another.
    """

    space: int
    name: str
    members: tuple[str, ...]
    alive: int
    size: int
    broken: tuple[int, ...]


def consistency_report(spaces: ChannelSpaces, gammas: Mapping[str, np.ndarray],
                       threshold: float = DEFAULT_THRESHOLD) -> list[GroupConsistency]:
    """Per tied group with >= 2 bn members: alive count and disagreeing channels."""
    report = []
    for space, cover in spaces.bn_cover.items():
        present = [(bn, off) for bn, off in cover if bn in gammas]
        if len(present) < 2:
            continue
        size = int(spaces.sizes[space])
        alive = np.array([np.abs(np.asarray(gammas[bn], dtype=np.float32)[off:off + size]) > np.float32(threshold)
                          for bn, off in present])
        broken = np.flatnonzero(alive.any(axis=0) & ~alive.all(axis=0))
        report.append(GroupConsistency(space, spaces.name_of(space), tuple(bn for bn, _ in present),
                                       int(alive.any(axis=0).sum()), size,
                                       tuple(int(c) for c in broken)))
    return report


@dataclass(frozen=True)
class Topology:
    """What the alive widths remove from the network.

    removable_blocks : ``(add op, branch input op, reason)`` for residual branches that
        compute nothing any more (a space inside them is empty, or every |gamma| of the bn
        ending them is under the threshold).
    dead_towers : ``(concat op, input op)`` for concat inputs with no alive channel.
    zero_width : source ops whose output space has no alive channel.
    """

    removable_blocks: tuple[tuple[str, str, str], ...]
    dead_towers: tuple[tuple[str, str], ...]
    zero_width: tuple[str, ...]


def topology_report(graph: ChannelGraph, spaces: ChannelSpaces, widths: np.ndarray,
                    gammas: Mapping[str, np.ndarray] | None = None,
                    threshold: float = DEFAULT_THRESHOLD) -> Topology:
    """Removable residual blocks, dead concat towers and zero-width layers for ``widths``.

    Reads the branches, towers and source ops ``spaces`` recorded when it was built: no
    graph walk (``graph`` is only asked for op kinds).
    """
    gammas = gammas or {}

    def dead(op: str) -> bool:
        layout = spaces.op_out.get(op)
        return bool(layout) and all(widths[s.space] == 0 for s in layout)

    zero = tuple(n for n in spaces.source_ops if dead(n))
    blocks = []
    for add, branches in spaces.residual_branches.items():
        for branch_end, branch_ops in branches.items():
            reason = _branch_dead_reason(graph, spaces, widths, gammas, threshold, add, branch_ops)
            if reason:
                blocks.append((add, branch_end, reason))
    towers = tuple((cat, src) for cat, inputs in spaces.concat_inputs.items() for src in inputs if dead(src))
    return Topology(tuple(blocks), towers, zero)


def _branch_dead_reason(graph, spaces, widths, gammas, threshold, add, branch_ops) -> str:
    add_spaces = {s.space for s in spaces.op_out.get(add, ())}
    for op in branch_ops:
        if is_source_kind(graph[op]):
            inner = [s.space for s in spaces.op_out.get(op, ()) if s.space not in add_spaces]
            if inner and all(widths[s] == 0 for s in inner):
                return f"{op} has no alive output channel"
    ending = [op for op in branch_ops if graph[op]["kind"] == Kind.BN
              and {s.space for s in spaces.op_out.get(op, ())} <= add_spaces and op in gammas]
    if ending and all((np.abs(np.asarray(gammas[op])) <= threshold).all() for op in ending):
        return f"every |gamma| of {ending[-1]} is at or under the threshold"
    return ""
