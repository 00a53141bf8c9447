"""Rebuild a model with new widths, to retrain from scratch (DESIGN section 6).

Frameworks are imported here only (this folder is the one that may touch them). PyTorch:
module surgery, each Conv/Linear/norm module replaced by one of the new width, alive weights
optionally copied in; removed residual branches become weightless modules (the branch's last
module outputs zeros, the rest pass through) and the model is saved with ``torch.export``.
Keras: ``get_config`` with new ``filters``/``units``, removed branches dropped from the config
and their ``Add`` reduced to its shortcut, then ``from_config``.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from morphscope.analyzers.morph import ExportPlan
from morphscope.analyzers.spaces import CHANNEL_RULES, Layout, is_source_kind, layout_width, segment_offsets
from morphscope.analyzers.widths import WidthModel
from morphscope.errors import GraphError
from morphscope.graph import ChannelGraph, Kind, is_depthwise


def layout_indices(layout: Layout, masks: tuple[np.ndarray, ...], sizes: np.ndarray) -> np.ndarray:
    """Indices of the alive channels of a layout in the seed tensor (segments end to end)."""
    picked = []
    for offset, seg in segment_offsets(layout, sizes):
        alive = np.flatnonzero(masks[seg.space])
        if seg.repeat == 1:
            picked.append(offset + alive)
        elif seg.interleave == "block":  # channel c occupies c*r .. c*r+r-1
            picked.append(offset + (alive[:, None] * seg.repeat + np.arange(seg.repeat)).reshape(-1))
        else:  # tile: copy k of the space starts at k*size
            picked.append(offset + (np.arange(seg.repeat)[:, None] * int(sizes[seg.space]) + alive).reshape(-1))
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)


def _check_other_params(graph: ChannelGraph, model: WidthModel, plan: ExportPlan) -> None:
    """Ops owning weights the rebuild cannot resize (layer scale, class token) must keep width."""
    for name, attrs in graph.ops():
        if attrs.get("params") and not CHANNEL_RULES[attrs["kind"]].channel_weights \
                and name not in plan.removed_ops:
            for seg in model.spaces.op_out.get(name, ()):
                if plan.widths[seg.space] != model.spaces.sizes[seg.space]:
                    raise GraphError(f"{graph.name}: cannot rebuild {name} ({attrs.get('op')}): it "
                                     "owns weights on a space whose width changes")


# -- PyTorch ----------------------------------------------------------------------------------

def rebuild_torch(module: Any, graph: ChannelGraph, model: WidthModel, plan: ExportPlan,
                  masks: tuple[np.ndarray, ...] | None = None) -> Any:
    """A copy of ``module`` with the plan's widths; alive weights copied when ``masks`` given."""
    from torch import nn

    new = copy.deepcopy(module).cpu()
    spaces = model.spaces
    removed_ends = {end for _, end, _ in plan.removed_blocks}
    for name, attrs in graph.ops():
        kind = attrs["kind"]
        if not CHANNEL_RULES[kind].channel_weights:
            if attrs.get("param_keys") and name not in plan.removed_ops:
                _resize_loose_params(new, graph, model, plan, name, attrs, masks)
            continue
        old = _submodule(new, _module_of(attrs, name))
        if old is None:
            continue
        if name in plan.removed_ops:
            if name in removed_ends:
                replacement = _zero_map_class()(layout_width(spaces.op_out[name], plan.widths),
                                                tuple(attrs.get("out_spatial") or ()),
                                                channels_last=kind == Kind.LINEAR)
            else:
                replacement = nn.Identity()
            _set_submodule(new, _module_of(attrs, name), replacement)
            continue
        a_in = layout_width(spaces.op_in.get(name, ()), plan.widths)
        a_out = layout_width(spaces.op_out.get(name, ()), plan.widths)
        if (a_in, a_out) == (layout_width(spaces.op_in.get(name, ()), spaces.sizes),
                             layout_width(spaces.op_out.get(name, ()), spaces.sizes)):
            continue  # unchanged (pinned or fully alive): keep the module and its weights
        replacement = _resized(old, kind, attrs, a_in, a_out)
        if masks is not None:
            in_idx = layout_indices(spaces.op_in.get(name, ()), masks, spaces.sizes)
            out_idx = layout_indices(spaces.op_out.get(name, ()), masks, spaces.sizes)
            _copy_alive(old, replacement, kind, attrs, in_idx, out_idx)
        _set_submodule(new, _module_of(attrs, name), replacement)
    return new.eval()


def _module_of(attrs: dict[str, Any], name: str) -> str:
    """The module path owning an op's weights (``layer1.0.conv1.weight`` -> ``layer1.0.conv1``)."""
    keys = attrs.get("param_keys") or ()
    return keys[0].rsplit(".", 1)[0] if keys else name


@functools.cache
def _zero_map_class() -> type:
    import torch
    from torch import nn

    class ZeroMap(nn.Module):
        """The output of a removed residual branch: zeros, so the add keeps only its shortcut."""

        def __init__(self, channels: int, spatial: tuple[int, ...], channels_last: bool = False):
            super().__init__()
            self.shape = (*spatial, channels) if channels_last else (channels, *spatial)

        def forward(self, x):
            return torch.zeros((x.shape[0], *self.shape), dtype=x.dtype, device=x.device)

    return ZeroMap


def _resize_loose_params(root: Any, graph: ChannelGraph, model: WidthModel, plan: ExportPlan,
                         name: str, attrs: dict[str, Any], masks: tuple[np.ndarray, ...] | None) -> None:
    """Weights owned by a functional op (ConvNeXt's layer scale, shape (C, 1, 1)): the axis
    holding the op's channels is cut to the new width (alive channels when masks are given)."""
    import torch

    layout = model.spaces.op_out.get(name, ())
    seed, width = layout_width(layout, model.spaces.sizes), layout_width(layout, plan.widths)
    if seed == width:
        return
    keep = layout_indices(layout, masks, model.spaces.sizes) if masks is not None else np.arange(width)
    for key in attrs["param_keys"]:
        owner_name, _, pname = key.rpartition(".")
        owner = root.get_submodule(owner_name) if owner_name else root
        param = getattr(owner, pname)
        axes = [d for d, size in enumerate(param.shape) if size == seed]
        if len(axes) != 1:
            raise GraphError(f"{graph.name}: cannot resize {key} {tuple(param.shape)} of {name} "
                             f"to {width} channels")
        sliced = param.detach().index_select(axes[0], torch.as_tensor(keep[:width], dtype=torch.long))
        setattr(owner, pname, torch.nn.Parameter(sliced.clone(), requires_grad=param.requires_grad))


def _submodule(root: Any, name: str) -> Any:
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


def _set_submodule(root: Any, name: str, module: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _resized(old: Any, kind: Kind, attrs: dict[str, Any], a_in: int, a_out: int) -> Any:
    from torch import nn

    if kind == Kind.CONV:
        groups = a_in if is_depthwise(attrs) else old.groups
        cls = type(old)
        return cls(a_in, a_out, old.kernel_size, stride=old.stride, padding=old.padding,
                   dilation=old.dilation, groups=groups, bias=old.bias is not None,
                   padding_mode=old.padding_mode)
    if kind == Kind.LINEAR:
        if not isinstance(old, nn.Linear):
            raise GraphError(f"{attrs.get('op')} {type(old).__name__}: cannot resize this linear op")
        return nn.Linear(a_in, a_out, bias=old.bias is not None)
    if isinstance(old, nn.modules.batchnorm._BatchNorm):
        return type(old)(a_out, eps=old.eps, momentum=old.momentum, affine=old.affine,
                         track_running_stats=old.track_running_stats)
    if isinstance(old, nn.LayerNorm):  # type(old): subclasses such as LayerNorm2d keep their forward
        return type(old)((*old.normalized_shape[:-1], a_out), eps=old.eps,
                         elementwise_affine=old.elementwise_affine, bias=old.bias is not None)
    if isinstance(old, nn.GroupNorm):
        return type(old)(old.num_groups, a_out, eps=old.eps, affine=old.affine)
    raise GraphError(f"{type(old).__name__}: cannot resize this normalization module")


def _copy_alive(old: Any, new: Any, kind: Kind, attrs: dict[str, Any], in_idx, out_idx) -> None:
    import torch

    out_t = torch.as_tensor(out_idx, dtype=torch.long)
    with torch.no_grad():
        if kind == Kind.BN:
            for pname in ("weight", "bias", "running_mean", "running_var"):
                src, dst = getattr(old, pname, None), getattr(new, pname, None)
                if src is not None and dst is not None and src.dim() == 1:
                    dst.copy_(src[out_t])
            return
        new.weight.copy_(sliced_kernel(old.weight, attrs, in_idx, out_idx))
        if getattr(old, "bias", None) is not None:
            new.bias.copy_(old.bias[out_t])


def sliced_kernel(weight: Any, attrs: dict[str, Any], in_idx: np.ndarray, out_idx: np.ndarray) -> Any:
    """A conv or linear kernel in PyTorch's layout ((out, in/groups, ...); transposed convs
    (in, out/groups, ...)), a torch tensor or a numpy array, cut to the kept input and output
    channels. Grouped convs: each filter keeps the kept inputs of its own group (equal counts
    per group); depthwise: one input per filter.

    Raises
    ------
    GraphError
        For a grouped transposed conv (not followed).
    """
    groups = attrs.get("groups") or 1
    if is_depthwise(attrs):
        return weight[in_idx if attrs.get("transposed") else out_idx]
    if groups == 1:
        return weight[in_idx][:, out_idx] if attrs.get("transposed") else weight[out_idx][:, in_idx]
    if attrs.get("transposed"):
        raise GraphError(f"{attrs.get('op')}: cannot cut the kernel of a grouped transposed conv")
    in_per_group, out_per_group = weight.shape[1], weight.shape[0] // groups
    local = (np.sort(in_idx) % in_per_group).reshape(groups, -1)  # kept inputs, group by group
    return weight[out_idx[:, None], local[out_idx // out_per_group]]


def pt2_weight_slicer(graph: ChannelGraph, model: WidthModel, plan: ExportPlan,
                      masks: tuple[np.ndarray, ...] | None = None) -> Callable[[str, Any], Any]:
    """For :func:`~morphscope.exporters.pt2_rewrite.rewrite_pt2`: a function from a state_dict
    key and its seed tensor to the tensor of the plan's widths (None: unchanged). With
    ``masks`` the kept channels' values are copied; without, a resized tensor is initialized
    as PyTorch initializes a new module (kernels Kaiming-uniform, biases uniform in
    +-1/sqrt(fan_in), bn scale 1, shift 0, running mean 0, variance 1).

    Raises
    ------
    GraphError
        If the plan removes blocks (a program's graph cannot drop ops: plan with
        ``remove_blocks=False``), or an op owning other weights changes width.
    """
    spaces = model.spaces
    if plan.removed_ops:
        raise GraphError(f"{graph.name}: a .pt2 program keeps every op; plan without removing blocks")
    _check_other_params(graph, model, plan)
    cuts: dict[str, tuple[dict[str, Any], np.ndarray, np.ndarray, int, int]] = {}
    for name, attrs in graph.ops():
        if not CHANNEL_RULES[attrs["kind"]].channel_weights or not attrs.get("param_keys"):
            continue
        layouts = spaces.op_in.get(name, ()), spaces.op_out.get(name, ())
        widths = [layout_width(layout, plan.widths) for layout in layouts]
        if widths == [layout_width(layout, spaces.sizes) for layout in layouts]:
            continue
        chosen = masks or tuple(np.arange(n) < w for n, w in zip(spaces.sizes, plan.widths))
        in_idx, out_idx = (layout_indices(layout, chosen, spaces.sizes) for layout in layouts)
        module = _module_of(attrs, name)
        buffers = (f"{module}.running_mean", f"{module}.running_var") if attrs["kind"] == Kind.BN else ()
        for key in (*attrs["param_keys"], *buffers):
            cuts[key] = (attrs, in_idx, out_idx, *widths)

    def new_weight(key: str, tensor: Any) -> Any:
        if key not in cuts:
            return None
        attrs, in_idx, out_idx, a_in, a_out = cuts[key]
        if masks is not None:
            kept = sliced_kernel(tensor, attrs, in_idx, out_idx) if tensor.dim() > 1 else tensor[out_idx]
            return kept.contiguous().clone()
        return _fresh_tensor(key, tensor, attrs, a_in, a_out)

    return new_weight


def _fresh_tensor(key: str, seed: Any, attrs: dict[str, Any], a_in: int, a_out: int) -> Any:
    """A new tensor of the new widths, initialized as a new PyTorch module's would be."""
    import math

    import torch

    if attrs["kind"] == Kind.BN:
        fill = 1.0 if key.endswith((".weight", ".running_var")) else 0.0
        return torch.full((a_out,), fill, dtype=seed.dtype)
    groups = a_in if is_depthwise(attrs) else (attrs.get("groups") or 1)
    receptive = math.prod(seed.shape[2:]) if seed.dim() > 1 else math.prod(attrs.get("kernel") or ())
    fan_in = (a_out if attrs.get("transposed") else a_in) // groups * receptive
    if seed.dim() == 1:  # bias: uniform in +-1/sqrt(fan_in), as nn.Conv2d / nn.Linear
        bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
        return torch.empty(a_out, dtype=seed.dtype).uniform_(-bound, bound)
    first, second = (a_in, a_out // groups) if attrs.get("transposed") else (a_out, a_in // groups)
    kernel = torch.empty((first, second, *seed.shape[2:]), dtype=seed.dtype)
    torch.nn.init.kaiming_uniform_(kernel, a=math.sqrt(5))
    return kernel


def count_torch_params(module: Any) -> int:
    """``sum(p.numel() for p in module.parameters())``."""
    return sum(p.numel() for p in module.parameters())


def save_torch_pt2(module: Any, input_shape: tuple[int, ...], path: str | Path | BinaryIO) -> None:
    """Run one forward pass and save ``torch.export.export(module)`` to ``path`` (.pt2 file or
    a binary buffer)."""
    import torch

    example = torch.zeros((1, *input_shape))
    with torch.no_grad():
        module(example)
    torch.export.save(torch.export.export(module, (example,)), path)


# -- Keras ------------------------------------------------------------------------------------

def rebuild_keras(keras_model: Any, graph: ChannelGraph, model: WidthModel, plan: ExportPlan,
                  masks: tuple[np.ndarray, ...] | None = None) -> Any:
    """A new Keras model from ``keras_model.get_config()`` with the plan's widths; the alive
    channels' weights copied in when ``masks`` are given."""
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    _check_other_params(graph, model, plan)
    out_widths = {}
    for name, attrs in graph.ops():
        if is_source_kind(attrs) and name not in plan.removed_ops:
            layer = name.split("/")[-2] if name.endswith(("/depthwise", "/pointwise")) else name.split("/")[-1]
            if not name.endswith("/depthwise"):
                out_widths[layer] = layout_width(model.spaces.op_out[name], plan.widths)
    removed_layers = {n.split("/")[-1] for n in plan.removed_ops}
    branch_ends = {end.split("/")[-1]: add.split("/")[-1] for add, end, _ in plan.removed_blocks}
    config = copy.deepcopy(keras_model.get_config())
    _edit_config(config, out_widths, removed_layers, branch_ends)
    cls = type(keras_model) if type(keras_model).__name__ in ("Functional", "Sequential") else keras.Model
    try:
        new = cls.from_config(config)
    except (ValueError, TypeError) as err:
        raise GraphError(f"{graph.name}: Keras rejected the rebuilt config: {err}") from err
    if masks is not None:
        _copy_alive_keras(keras_model, new, graph, model, plan, masks)
    return new


def _copy_alive_keras(old_model: Any, new_model: Any, graph: ChannelGraph, model: WidthModel,
                      plan: ExportPlan, masks: tuple[np.ndarray, ...]) -> None:
    """Slice each conv/dense/bn layer's weights to its alive input and output channels
    (Keras kernels are (kh, kw, in, out); depthwise (kh, kw, channels, multiplier))."""
    spaces = model.spaces
    old_layers = {l.name: l for l in old_model._flatten_layers(include_self=False, recursive=True)}
    new_layers = {l.name: l for l in new_model._flatten_layers(include_self=False, recursive=True)}
    for name, attrs in graph.ops():
        if not CHANNEL_RULES[attrs["kind"]].channel_weights or name in plan.removed_ops:
            continue
        if name.endswith(("/depthwise", "/pointwise")):
            raise GraphError(f"{name}: copying weights into SeparableConv layers is not supported; "
                             "export without --copy-weights")
        layer = name.split("/")[-1]
        in_idx = layout_indices(spaces.op_in.get(name, ()), masks, spaces.sizes)
        out_idx = layout_indices(spaces.op_out.get(name, ()), masks, spaces.sizes)
        depthwise = is_depthwise(attrs)
        sliced = []
        for weight in old_layers[layer].get_weights():
            if weight.ndim == 1:
                sliced.append(weight[out_idx])
            elif depthwise:
                sliced.append(weight[..., in_idx, :])
            else:  # (kh, kw, in/g, out) as PyTorch's (out, in/g, kh, kw), cut, and back
                out_first = np.moveaxis(weight, (-1, -2), (0, 1))
                sliced.append(np.moveaxis(sliced_kernel(out_first, attrs, in_idx, out_idx), (0, 1), (-1, -2)))
        new_layers[layer].set_weights(sliced)


def _edit_config(config: dict[str, Any], out_widths: dict[str, int], removed: set[str],
                 branch_ends: dict[str, str]) -> None:
    layers = config.get("layers", [])
    config["layers"] = [layer for layer in layers if layer["config"].get("name") not in removed]
    for layer in config["layers"]:
        layer.pop("build_config", None)
        inner = layer["config"]
        name = inner.get("name")
        if name in out_widths:
            key = "units" if "units" in inner else "filters"
            if key in inner:
                inner[key] = out_widths[name]
        if "layers" in inner:  # nested model
            _edit_config(inner, out_widths, removed, branch_ends)
        if name in branch_ends.values():
            _drop_branch_inputs(layer, removed)


def _drop_branch_inputs(layer: dict[str, Any], removed: set[str]) -> None:
    """An Add whose branch was removed keeps its shortcut: it becomes a linear Activation."""
    for node in layer.get("inbound_nodes", []):
        args = node["args"][0] if node["args"] and isinstance(node["args"][0], list) else node["args"]
        kept = [t for t in args if t["config"]["keras_history"][0] not in removed]
        if len(kept) == 1:
            node["args"] = [kept[0]]
            layer["class_name"] = "Activation"
            layer["module"] = "keras.layers"
            layer["config"] = {"name": layer["config"]["name"], "activation": "linear",
                               "trainable": True, "dtype": layer["config"].get("dtype")}
        else:
            node["args"] = [kept]
