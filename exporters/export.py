"""The one export function the CLI and the app share: a plan's widths into a rebuilt model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from morphscope.analyzers.morph import ExportPlan
from morphscope.analyzers.widths import WidthModel
from morphscope.graph import ChannelGraph

MODEL_SUFFIX = {"torch": ".pt2", "keras": ".keras"}


def rebuilt_model_bytes(framework_model: Any, graph: ChannelGraph, model: WidthModel,
                        plan: ExportPlan, masks: tuple[np.ndarray, ...] | None = None) -> tuple[bytes, int]:
    """Rebuild ``framework_model`` with the plan's widths; the model file's bytes, in memory.

    Parameters
    ----------
    framework_model : torch.nn.Module or keras.Model
        The seed model (weights are read only when ``masks`` are given).
    masks : tuple of bool arrays, optional
        Alive masks per space: copy the alive channels' weights into the rebuilt model.

    Returns
    -------
    data : bytes
        A ``.pt2`` archive (``torch.export.save``) for PyTorch, a ``.keras`` archive for Keras
        (the suffix is :data:`MODEL_SUFFIX` of ``graph.framework``).
    params : int
        The rebuilt model's own parameter count (``sum(p.numel())`` or ``count_params()``),
        to set beside the analyzers' prediction.
    """
    import io
    import tempfile

    from morphscope.exporters import rebuild

    if graph.framework == "torch":
        new = rebuild.rebuild_torch(framework_model, graph, model, plan, masks)
        buffer = io.BytesIO()
        rebuild.save_torch_pt2(new, graph.input_shape, buffer)
        return buffer.getvalue(), rebuild.count_torch_params(new)
    new = rebuild.rebuild_keras(framework_model, graph, model, plan, masks)
    with tempfile.TemporaryDirectory(prefix="morphscope_keras_") as folder:
        path = Path(folder) / f"model{MODEL_SUFFIX['keras']}"  # Keras saves to .keras paths only
        new.save(str(path))
        return path.read_bytes(), int(new.count_params())


def write_rebuilt_model(framework_model: Any, graph: ChannelGraph, model: WidthModel,
                        plan: ExportPlan, path: str | Path,
                        masks: tuple[np.ndarray, ...] | None = None) -> int:
    """Rebuild ``framework_model`` with the plan's widths and save it to ``path``, replacing
    a previous file only once the new one is complete (:func:`~morphscope.exporters.files.write_files`).

    Parameters
    ----------
    path : str or Path
        ``.pt2`` for PyTorch, ``.keras`` for Keras.

    Returns
    -------
    params : int
        The rebuilt model's own parameter count (see :func:`rebuilt_model_bytes`).

    Raises
    ------
    OutputError
        If ``path`` cannot be written (checked before the model is rebuilt).
    """
    from morphscope.exporters.files import check_targets, write_files

    target = check_targets({"model file": path}, {})["model file"]
    data, params = rebuilt_model_bytes(framework_model, graph, model, plan, masks)
    write_files({target: data})
    return params
