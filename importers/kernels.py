"""Conv and dense kernels from a checkpoint, matched to a graph's source ops (group lasso).

The group-lasso family (:mod:`morphscope.analyzers.group_lasso`) scores channels by the
weights writing them. Here each source op's kernel is found by its checkpoint key and laid
out out-first, ``(out_channels, everything else)``, so the analyzers need no framework
layout knowledge.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from morphscope.errors import CheckpointMismatchError
from morphscope.graph import ChannelGraph, Kind


def is_weight_source(attrs: Mapping[str, Any]) -> bool:
    """Conv (not depthwise) and linear ops: the ops whose kernels open a channel space."""
    if attrs["kind"] == Kind.LINEAR:
        return True
    groups = attrs.get("groups", 1)
    return attrs["kind"] == Kind.CONV and not (groups > 1 and groups == attrs.get("in_channels"))


def kernel_out_axis(framework: str, attrs: Mapping[str, Any]) -> int:
    """The output-channel axis of a source op's kernel.

    PyTorch: conv ``(out, in/g, *k)`` and linear ``(out, in)`` -> 0; transposed conv
    ``(in, out/g, *k)`` -> 1. Keras: conv ``(*k, in, out)`` and Dense ``(in, out)`` -> -1;
    transposed conv ``(*k, out, in)`` -> -2.
    """
    transposed = bool(attrs.get("transposed"))
    if framework == "keras":
        return -2 if transposed else -1
    return 1 if transposed else 0


def kernel_keys(graph: ChannelGraph, name: str) -> tuple[str, ...]:
    """Checkpoint keys a source op's kernel may have: the PyTorch parameter ending in
    ``weight``; Keras 3 ``<layer>/vars/0`` or legacy ``<layer>/kernel`` (a separable conv's
    pointwise kernel is its layer's second variable)."""
    if graph.framework == "keras":
        parts = name.split("/")
        if parts[-1] == "pointwise" and len(parts) > 1:
            return (f"{parts[-2]}/vars/1", f"{parts[-2]}/pointwise_kernel")
        return (f"{parts[-1]}/vars/0", f"{parts[-1]}/kernel")
    return tuple(k for k in graph[name].get("param_keys", ()) if k.endswith("weight"))


def out_first(kernel: np.ndarray, axis: int) -> np.ndarray:
    """``kernel`` as a matrix with one row per output channel."""
    return np.moveaxis(np.asarray(kernel), axis, 0).reshape(kernel.shape[axis], -1)


def source_kernels(graph: ChannelGraph, tensors: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """The out-first kernel matrix of every source op found in a checkpoint's tensors (empty
    when there is none).

    Raises
    ------
    CheckpointMismatchError
        If a kernel has the wrong number of outputs.
    """
    kernels, wrong = {}, []
    for name, attrs in graph.ops():
        if not is_weight_source(attrs):
            continue
        key = next((k for k in kernel_keys(graph, name) if np.ndim(tensors.get(k)) >= 2), None)
        if key is None:
            continue
        axis = kernel_out_axis(graph.framework, attrs)
        kernel = np.asarray(tensors[key])
        if kernel.shape[axis] != attrs["out_channels"]:
            wrong.append(f"{key} has {kernel.shape[axis]} outputs, the model's {name} has "
                         f"{attrs['out_channels']}")
            continue
        kernels[name] = out_first(kernel, axis)
    if wrong:
        raise CheckpointMismatchError(f"{source}: does not fit {graph.name}: {'; '.join(wrong[:2])}")
    return kernels
