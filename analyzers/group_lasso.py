"""Alive channels from weight norms: morph-net's group-lasso family, for layers without bn.

morph-net's ``GroupLassoRegularizer`` (``morph_net/op_regularizers/group_lasso_regularizer.py``)
scores each output channel of a conv, transposed conv or dense layer by the norm of the weights
that write it::

    norm = l1_fraction * mean(|w|) + (1 - l1_fraction) * sqrt(mean(w**2))

over every weight axis but the output one (RMS and mean |w|: the L2 norm / sqrt(n) and the L1
norm / n). A channel is alive when its group's norm, the max over the group's writers (a
residual add ties several), is strictly above the threshold. Depthwise convs are not sources:
they pass their input's space through, as in morph-net. Batch norm plays no part in this
family (morph-net's group-lasso handler dict has no bn source).

Everything here is numpy on plain arrays; the training side evaluates the same norms on live
tensors (:mod:`morphscope.regularizers.group_lasso`).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from morphscope.analyzers.alive import alive_masks
from morphscope.analyzers.spaces import ChannelSpaces
from morphscope.errors import MorphScopeError

DEFAULT_L1_FRACTION = 0.0  # morph-net's default: pure (RMS) L2


def check_l1_fraction(l1_fraction: float) -> None:
    """Raise a one-line error unless ``0 <= l1_fraction <= 1`` (morph-net raises ValueError)."""
    if not 0.0 <= l1_fraction <= 1.0:
        raise MorphScopeError(f"l1_fraction {l1_fraction!r} is outside [0, 1]")


def channel_norms(kernel: np.ndarray, l1_fraction: float = DEFAULT_L1_FRACTION) -> np.ndarray:
    """One norm per output channel of an out-first kernel matrix.

    Parameters
    ----------
    kernel : array of shape (out_channels, n)
        The weights writing each output channel, one row per channel (as
        :func:`morphscope.importers.kernels.source_kernels` lays them out).
    l1_fraction : float
        Weight of ``mean |w|`` against ``sqrt(mean w**2)``, in [0, 1].

    Returns
    -------
    norms : float32 array of shape (out_channels,)

    Examples
    --------
    morph-net's ``GroupLassoFlopDecoratedTest``: a 1x1 kernel of ones, 3 inputs, 2 outputs:

    >>> channel_norms(np.ones((2, 3))).tolist()
    [1.0, 1.0]
    """
    check_l1_fraction(l1_fraction)
    w = np.asarray(kernel, dtype=np.float64).reshape(len(kernel), -1)
    norm = np.sqrt(np.mean(w ** 2, axis=1))
    if l1_fraction > 0.0:
        norm = l1_fraction * np.mean(np.abs(w), axis=1) + (1.0 - l1_fraction) * norm
    return norm.astype(np.float32)


def writer_cover(spaces: ChannelSpaces, sources: Iterable[str]) -> dict[int, list[tuple[str, int]]]:
    """Per prunable space, ``(source op, offset into its output channels)`` of every op of
    ``sources`` writing it (the group-lasso analogue of ``spaces.bn_cover``)."""
    cover: dict[int, list[tuple[str, int]]] = {}
    for name in sources:
        offset = 0
        for seg in spaces.op_out.get(name, ()):
            if seg.repeat == 1 and not spaces.pinned[seg.space]:
                cover.setdefault(seg.space, []).append((name, offset))
            offset += int(spaces.sizes[seg.space]) * seg.repeat
    return cover


def group_lasso_scores(spaces: ChannelSpaces, kernels: Mapping[str, np.ndarray],
                       l1_fraction: float = DEFAULT_L1_FRACTION) -> dict[int, np.ndarray]:
    """Per space written by an op of ``kernels``: max over its writers of their channel norms
    (float32), ready for :func:`morphscope.analyzers.alive.alive_masks`.

    Parameters
    ----------
    kernels : mapping of source op name to its out-first kernel matrix

    Examples
    --------
    A dense layer 2 -> 3 whose third output has zero weights scores 0 there:

    >>> from morphscope.analyzers.spaces import build_channel_spaces
    >>> from morphscope.graph import ChannelGraph, Kind
    >>> g = ChannelGraph("mlp", "torch", (2,))
    >>> _ = g.add_op("x", Kind.INPUT, out_channels=2)
    >>> _ = g.add_op("fc1", Kind.LINEAR, in_channels=2, out_channels=3)
    >>> _ = g.add_op("fc2", Kind.LINEAR, in_channels=3, out_channels=4)
    >>> g.connect("x", "fc1"); g.connect("fc1", "fc2")
    >>> spaces = build_channel_spaces(g)
    >>> scores = group_lasso_scores(spaces, {"fc1": np.array([[3.0, 4.0], [1, 1], [0, 0]])})
    >>> [round(float(v), 4) for v in scores[spaces.op_out["fc1"][0].space]]
    [3.5355, 1.0, 0.0]
    """
    scores: dict[int, np.ndarray] = {}
    for space, cover in writer_cover(spaces, kernels).items():
        size = int(spaces.sizes[space])
        scores[space] = np.max([channel_norms(kernels[op], l1_fraction)[offset:offset + size]
                                for op, offset in cover], axis=0)
    return scores


def group_lasso_masks(spaces: ChannelSpaces, kernels: Mapping[str, np.ndarray], threshold: float,
                      l1_fraction: float = DEFAULT_L1_FRACTION) -> list[np.ndarray]:
    """Alive masks per space from weight norms: ``norm > threshold`` (strict, in float32)."""
    return alive_masks(spaces, group_lasso_scores(spaces, kernels, l1_fraction), threshold)
