"""The one export function the CLI and the app share: a plan's widths into a rebuilt model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from morphscope.analyzers.morph import ExportPlan
from morphscope.analyzers.widths import WidthModel
from morphscope.graph import ChannelGraph

MODEL_SUFFIX = {"torch": ".pt2", "keras": ".keras"}


def write_rebuilt_model(framework_model: Any, graph: ChannelGraph, model: WidthModel,
                        plan: ExportPlan, path: str | Path,
                        masks: tuple[np.ndarray, ...] | None = None) -> int:
    """Rebuild ``framework_model`` with the plan's widths and save it to ``path``.

    Parameters
    ----------
    framework_model : torch.nn.Module or keras.Model
        The seed model (weights are read only when ``masks`` are given).
    path : str or Path
        ``.pt2`` (``torch.export.save``) for PyTorch, ``.keras`` for Keras.
    masks : tuple of bool arrays, optional
        Alive masks per space: copy the alive channels' weights into the rebuilt model.

    Returns
    -------
    params : int
        The rebuilt model's own parameter count (``sum(p.numel())`` or ``count_params()``),
        to set beside the analyzers' prediction.
    """
    from morphscope.exporters import rebuild

    if graph.framework == "torch":
        new = rebuild.rebuild_torch(framework_model, graph, model, plan, masks)
        rebuild.save_torch_pt2(new, graph.input_shape, path)
        return rebuild.count_torch_params(new)
    new = rebuild.rebuild_keras(framework_model, graph, model, plan, masks)
    new.save(str(path))
    return int(new.count_params())
