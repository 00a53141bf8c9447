"""The one export function the CLI, the app and the API share: a plan's widths into a rebuilt
model (a live object, or a model file's bytes)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from morphscope.analyzers.morph import ExportPlan
from morphscope.analyzers.widths import WidthModel
from morphscope.errors import GraphError
from morphscope.graph import ChannelGraph
from morphscope.importers.objects import Pt2Archive

MODEL_SUFFIX = {"torch": ".pt2", "keras": ".keras"}


def copy_masks(graph: ChannelGraph, plan: ExportPlan, copy_weights: bool) -> tuple[np.ndarray, ...] | None:
    """The seed channels whose weights a rebuild copies (``plan.kept``), or None.

    Raises
    ------
    GraphError
        If weights are to be copied but the plan cannot say which channels to keep.
    """
    if not copy_weights:
        return None
    if plan.kept is None:
        raise GraphError(f"{graph.name}: cannot copy weights: the structure has no channel scores "
                         "(a widths file), or a width grows past the seed's (a multiplier over "
                         "the seed width); rebuild without copying weights")
    return plan.kept


def rebuild_model(framework_model: Any, graph: ChannelGraph, model: WidthModel, plan: ExportPlan,
                  copy_weights: bool = False) -> Any:
    """A new ``nn.Module`` or ``keras.Model`` with the plan's widths (the seed is untouched);
    with ``copy_weights`` the kept channels' weights (``plan.kept``) are copied in. A
    :class:`Pt2Archive` gives the ``torch.export.ExportedProgram`` of its rewritten archive
    (the user's own file, rewritten without running it, then loaded)."""
    from morphscope.exporters import rebuild

    if isinstance(framework_model, Pt2Archive):
        import io

        import torch

        data, _ = rebuilt_model_bytes(framework_model, graph, model, plan, copy_weights)
        return torch.export.load(io.BytesIO(data))
    masks = copy_masks(graph, plan, copy_weights)
    if graph.framework == "torch":
        return rebuild.rebuild_torch(framework_model, graph, model, plan, masks)
    return rebuild.rebuild_keras(framework_model, graph, model, plan, masks)


def rebuilt_model_bytes(source: Any, graph: ChannelGraph, model: WidthModel, plan: ExportPlan,
                        copy_weights: bool = False) -> tuple[bytes, int]:
    """Rebuild ``source`` with the plan's widths; the model file's bytes, in memory.

    Parameters
    ----------
    source : torch.nn.Module, keras.Model or Pt2Archive
        The seed model. A :class:`Pt2Archive` is rewritten in place of being run: its weight
        tensors are cut and its graph's shapes follow (plan it with ``remove_blocks=False``).
    copy_weights : bool
        Copy the kept channels' weights (``plan.kept``) instead of initializing anew.

    Returns
    -------
    data : bytes
        A ``.pt2`` archive for PyTorch, a ``.keras`` archive for Keras
        (:data:`MODEL_SUFFIX` of ``graph.framework``).
    params : int
        The rebuilt model's own parameter count (``sum(p.numel())``, ``count_params()``, or
        for a rewritten archive its parameters' sizes), to set beside the prediction.
    """
    import io
    import tempfile

    from morphscope.exporters import rebuild

    if isinstance(source, Pt2Archive):
        from morphscope.exporters.pt2_rewrite import rewrite_pt2

        slicer = rebuild.pt2_weight_slicer(graph, model, plan, copy_masks(graph, plan, copy_weights))
        data = rewrite_pt2(source.data, source.name, slicer)
        return data, pt2_parameter_count(data)
    new = rebuild_model(source, graph, model, plan, copy_weights)
    if graph.framework == "torch":
        buffer = io.BytesIO()
        rebuild.save_torch_pt2(new, graph.input_shape, buffer)
        return buffer.getvalue(), rebuild.count_torch_params(new)
    with tempfile.TemporaryDirectory(prefix="morphscope_keras_") as folder:
        path = Path(folder) / f"model{MODEL_SUFFIX['keras']}"  # Keras saves to .keras paths only
        new.save(str(path))
        return path.read_bytes(), int(new.count_params())


def pt2_parameter_count(data: bytes) -> int:
    """The parameters of a ``.pt2`` archive, from its weights config (sizes of the entries
    marked ``is_param``): what ``torch.export.load(...).module().parameters()`` would count."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = next(n for n in archive.namelist() if n.endswith("data/weights/model_weights_config.json"))
        config = json.loads(archive.read(member))["config"]
    return sum(math.prod(size["as_int"] for size in entry["tensor_meta"]["sizes"])
               for entry in config.values() if entry.get("is_param"))


def write_rebuilt_model(source: Any, graph: ChannelGraph, model: WidthModel, plan: ExportPlan,
                        path: str | Path, copy_weights: bool = False) -> int:
    """Rebuild ``source`` with the plan's widths and save it to ``path``, replacing a previous
    file only once the new one is complete (:func:`~morphscope.exporters.files.write_files`).

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
    data, params = rebuilt_model_bytes(source, graph, model, plan, copy_weights)
    write_files({target: data})
    return params


def runnable_module(source: Any, graph: ChannelGraph, model: WidthModel, plan: ExportPlan | None) -> Any:
    """A PyTorch module or Keras model to run: the seed (``plan`` None) or the plan's rebuild.
    A :class:`Pt2Archive` runs only as rewritten by us (the seed: rewritten with nothing cut,
    so its example-inputs pickle is ours, not the file's)."""
    if graph.framework == "keras":  # never imports torch
        return source if plan is None else rebuild_model(source, graph, model, plan)
    import io

    import torch

    from morphscope.exporters.pt2_rewrite import rewrite_pt2

    if plan is not None:
        rebuilt = rebuild_model(source, graph, model, plan)
        return rebuilt.module() if isinstance(rebuilt, torch.export.ExportedProgram) else rebuilt
    if isinstance(source, Pt2Archive):
        return torch.export.load(io.BytesIO(rewrite_pt2(source.data, source.name, lambda key, tensor: None))).module()
    return source
