"""Where a structure changed: layers by the resolution of their output map.

FLOP targeting removes channels where each one costs the most MACs: high-resolution layers.
Size targeting removes them where each one holds the most weights: late, wide, low-resolution
layers. Grouping layers by output resolution shows which one a structure did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from morphscope.analyzers.runs import layer_matrix
from morphscope.analyzers.widths import WidthModel
from morphscope.graph import ChannelGraph


def resolution_label(spatial: tuple[int, ...] | None) -> str:
    """``16x16`` for a 16 x 16 map, ``vector`` for a layer without a map (a linear on pooled
    features)."""
    return "x".join(map(str, spatial)) if spatial else "vector"


def layer_resolutions(graph: ChannelGraph, layers: list[str]) -> list[str]:
    """Output resolution label of each named op."""
    return [resolution_label(tuple(graph[name].get("out_spatial") or ())) for name in layers]


def kept_by_resolution(graph: ChannelGraph, model: WidthModel,
                       structures: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Share of channels each structure keeps, per output resolution, over prunable source ops.

    Parameters
    ----------
    structures : mapping
        Label -> per-space widths.

    Returns
    -------
    dict
        ``resolutions`` (labels, highest resolution first), ``layers`` (the prunable layers at
        each resolution), ``seed_channels`` (their seed channels summed) and ``shares`` (label ->
        kept channels / seed channels, per resolution).

    Notes
    -----
    Prunable: a conv or linear whose output space is not pinned (logits and spaces touching
    ops the rules cannot follow always keep their width and would only dilute the share).
    """
    names, matrix = layer_matrix(graph, model)
    pinned = np.asarray(model.spaces.pinned, dtype=bool)
    prunable = [i for i in range(len(names)) if not (matrix[i] > 0)[pinned].any()]
    labels = layer_resolutions(graph, [names[i] for i in prunable])
    pixels = {lab: int(np.prod(graph[names[i]].get("out_spatial") or (1,)))
              for lab, i in zip(labels, prunable)}
    order = sorted(pixels, key=lambda lab: -pixels[lab])
    rows = {lab: [i for lab_i, i in zip(labels, prunable) if lab_i == lab] for lab in order}
    seed = matrix @ model.seed_widths
    seed_channels = [int(seed[r].sum()) for r in rows.values()]
    shares = {}
    for label, widths in structures.items():
        kept = matrix @ np.asarray(widths, dtype=np.int64)
        shares[label] = [float(kept[r].sum() / max(s, 1)) for r, s in zip(rows.values(), seed_channels)]
    return {"resolutions": order, "layers": {lab: [names[i] for i in r] for lab, r in rows.items()},
            "seed_channels": seed_channels, "shares": shares}
