"""ATen op records -> ChannelGraph: the framework-neutral half of the PyTorch importer.

Every capture route (one forward pass under a dispatch mode, a ``torch.export``
ExportedProgram, and the JSON inside a ``.pt2`` file, read without unpickling) is first turned
into :class:`OpRecord` lists; this module turns those into a
:class:`~morphscope.graph.ChannelGraph`. It imports no framework.

Naming: an op that owns a weight is named after it (``layer1.0.conv1.weight`` ->
``layer1.0.conv1``); an op run by a leaf module without weights takes the module path
(``layer1.0.relu``); a functional op inside a container module is ``<module>.<op>``
(``layer1.0.add``). Repeats get ``_1``, ``_2``, ... as torch.fx does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from morphscope.errors import GraphError
from morphscope.graph import ChannelGraph, Kind
from morphscope.importers.nodes import Namer, conv_attrs, linear_attrs
from morphscope.importers.products import einsum_macs, matmul_dims


@dataclass(frozen=True)
class Ref:
    """A tensor value, by its name in the captured program."""

    name: str


@dataclass
class OpRecord:
    """One ATen call: ``op`` is the short name (``conv2d``; in-place ``_`` and overload dropped)."""

    name: str
    op: str
    args: dict[str, Any]  # schema argument name -> Ref, list of Ref, or a Python constant
    outputs: list[str | None]  # tensor value names, None where unused
    module_path: str = ""
    module_is_leaf: bool = False


@dataclass
class Program:
    """A captured program in plain data: what both capture paths produce."""

    records: list[OpRecord]
    shapes: dict[str, tuple[int, ...]]  # tensor value name -> shape
    parameters: dict[str, str]  # placeholder name -> state_dict key (learnable parameters)
    constants: set[str] = field(default_factory=set)  # buffers and lifted constants
    user_inputs: list[str] = field(default_factory=list)
    user_outputs: list[str] = field(default_factory=list)


def short_op_name(target: str) -> str:
    """``torch.ops.aten.add_.Tensor`` -> ``add``; ``aten.conv2d.default`` -> ``conv2d``."""
    parts = target.split(".")
    if "aten" in parts:
        parts = parts[parts.index("aten") + 1:]
    name = parts[0]
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return name


# -- classification: one registry, ATen short name -> Kind (or a rule picking one) -----------

def _is_channel_dim(dim_arg: str) -> Callable[["_Ctx"], Kind]:
    """Kind rule for ops acting along one axis: channel axis -> concat/split, else opaque."""

    def rule(ctx: "_Ctx") -> Kind:
        return ctx.kind_if_channel_axis(dim_arg)

    return rule


def _global_or_window_pool(ctx: "_Ctx") -> Kind:
    out_shape = ctx.out_shape
    return Kind.GLOBAL_POOL if all(s == 1 for s in out_shape[2:]) else Kind.POOL


def _mean_kind(ctx: "_Ctx") -> Kind:
    dims = ctx.record.args.get("dim") or []
    rank = len(ctx.in_shape)
    spatial = {d % rank for d in dims}
    axis = ctx.in_axis
    return Kind.GLOBAL_POOL if axis is not None and axis not in spatial and spatial else Kind.OPAQUE


def _weighted_matmul_kind(ctx: "_Ctx") -> Kind:
    """A product of an activation and a 2-D weight (``x @ W^T``) is a linear layer; any other
    product (between activations, batched weights) is opaque and counts its MACs."""
    weight = ctx.record.args.get(_WEIGHT_ARG[ctx.record.op])
    data = ctx.record.args.get(_DATA_ARG[ctx.record.op])
    if weight in ctx.param_refs and data in ctx.act_refs and len(ctx.shapes[weight.name]) == 2:
        return Kind.LINEAR
    return Kind.OPAQUE


def _restride_kind(ctx: "_Ctx") -> Kind:
    """``as_strided`` keeping the shape (adaptive pooling re-striding a channels-last result)
    moves no channel; any other use is opaque."""
    return Kind.RESHAPE if ctx.out_shape == ctx.in_shape else Kind.OPAQUE


def _view_kind(ctx: "_Ctx") -> Kind:
    """A view merging the channel axis with the axes after it is a flatten (channel c feeds
    the block c*HW .. (c+1)*HW-1); any other view is a reshape."""
    axis, in_shape, out_shape = ctx.in_axis, ctx.in_shape, ctx.out_shape
    if axis is None or len(in_shape) <= axis + 1 or len(out_shape) != axis + 1:
        return Kind.RESHAPE
    if out_shape[:axis] == in_shape[:axis] and out_shape[axis] == math.prod(in_shape[axis:]):
        return Kind.FLATTEN
    return Kind.RESHAPE


_CONV = ("conv1d", "conv2d", "conv3d", "convolution", "_convolution",
         "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
_BN = ("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
       "native_batch_norm", "layer_norm", "native_layer_norm", "group_norm",
       "native_group_norm", "instance_norm")
_ACT = ("relu", "relu6", "silu", "gelu", "sigmoid", "hardswish", "hardsigmoid", "hardtanh",
        "tanh", "softmax", "_softmax", "log_softmax", "leaky_relu", "elu", "mish", "clamp",
        "clamp_min", "clamp_max", "softplus", "prelu", "selu", "erf", "exp", "neg", "sqrt",
        "rsqrt", "abs")
_POOL = ("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "avg_pool1d",
         "avg_pool2d", "avg_pool3d")
_RESHAPE = ("view", "reshape", "_unsafe_view", "permute", "transpose", "t", "contiguous",
            "squeeze", "unsqueeze", "expand", "slice", "select", "roll", "movedim")
_IDENTITY = ("dropout", "feature_dropout", "alpha_dropout", "clone", "alias", "detach",
             "_to_copy", "to", "type_as", "lift_fresh_copy")

ATEN_TO_KIND: Mapping[str, Kind | Callable[["_Ctx"], Kind]] = {
    **{op: Kind.CONV for op in _CONV},
    "linear": Kind.LINEAR,
    "addmm": _weighted_matmul_kind,
    "mm": _weighted_matmul_kind,
    "matmul": _weighted_matmul_kind,
    **{op: Kind.BN for op in _BN},
    "add": Kind.ADD,
    "sub": Kind.ADD,
    "rsub": Kind.ADD,
    "mul": Kind.MUL,
    "div": Kind.MUL,
    "cat": _is_channel_dim("dim"),
    "concat": _is_channel_dim("dim"),
    "split": _is_channel_dim("dim"),
    "split_with_sizes": _is_channel_dim("dim"),
    "chunk": _is_channel_dim("dim"),
    "unbind": _is_channel_dim("dim"),
    **{op: Kind.ACT for op in _ACT},
    **{op: Kind.POOL for op in _POOL},
    "adaptive_avg_pool1d": _global_or_window_pool,
    "adaptive_avg_pool2d": _global_or_window_pool,
    "_adaptive_avg_pool2d": _global_or_window_pool,
    "adaptive_avg_pool3d": _global_or_window_pool,
    "adaptive_max_pool2d": _global_or_window_pool,
    "mean": _mean_kind,
    "flatten": Kind.FLATTEN,
    **{op: Kind.RESHAPE for op in _RESHAPE},
    **{op: _view_kind for op in ("view", "reshape", "_unsafe_view")},
    "as_strided": _restride_kind,
    "pad": Kind.PAD,
    "constant_pad_nd": Kind.PAD,
    "upsample_nearest2d": Kind.RESIZE,
    "upsample_bilinear2d": Kind.RESIZE,
    "interpolate": Kind.RESIZE,
    **{op: Kind.IDENTITY for op in _IDENTITY},
}

# The data operand of ops that compute (count MACs), by ATen short name.
_DATA_ARG = {**{op: "input" for op in _CONV}, "linear": "input", "addmm": "mat1", "mm": "self",
             "matmul": "self", "bmm": "self"}

# Ops whose tensor outputs are a list, one graph node per used output.
MULTI_OUTPUT_SPLITS = frozenset({"split", "split_with_sizes", "chunk", "unbind"})


# -- per-op context: shapes and channel axes of the op's tensors ------------------------------

@dataclass
class _Ctx:
    record: OpRecord
    act_refs: list[Ref]
    param_refs: list[Ref]
    shapes: dict[str, tuple[int, ...]]
    axes: dict[str, int | None]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.shapes[self.act_refs[0].name]

    @property
    def in_axis(self) -> int | None:
        return self.axes.get(self.act_refs[0].name)

    @property
    def out_shape(self) -> tuple[int, ...]:
        first = next((o for o in self.record.outputs if o is not None), None)
        return self.shapes.get(first, ()) if first else ()

    def kind_if_channel_axis(self, dim_arg: str) -> Kind:
        dim = self.record.args.get(dim_arg, 0)
        rank = len(self.in_shape)
        on_channels = self.in_axis is not None and dim % rank == self.in_axis
        if not on_channels:
            return Kind.OPAQUE
        return Kind.CONCAT if self.record.op in ("cat", "concat") else Kind.SPLIT


def classify_aten(ctx: _Ctx) -> Kind:
    """The Kind of one ATen op; unknown ops are OPAQUE (and pinned), never guessed."""
    entry = ATEN_TO_KIND.get(ctx.record.op)
    if entry is None:
        return Kind.OPAQUE
    return entry if isinstance(entry, Kind) else entry(ctx)


# -- attributes per kind ----------------------------------------------------------------------

def _weight_shape(ctx: _Ctx, arg: str) -> tuple[int, ...] | None:
    ref = ctx.record.args.get(arg)
    return ctx.shapes[ref.name] if isinstance(ref, Ref) else None


def _conv_attrs(ctx: _Ctx) -> dict[str, Any]:
    args = ctx.record.args
    w_shape = _weight_shape(ctx, "weight")
    groups = int(args.get("groups", 1) or 1)
    transposed = bool(args.get("transposed", False)) or "transpose" in ctx.record.op
    spatial_rank = len(w_shape) - 2
    stride = args.get("stride") or [1] * spatial_rank
    return conv_attrs(
        in_channels=ctx.in_shape[1], out_channels=w_shape[1] * groups if transposed else w_shape[0],
        groups=groups, kernel=w_shape[2:],
        stride=stride if len(stride) == spatial_rank else stride * spatial_rank,
        in_spatial=ctx.in_shape[2:], out_spatial=ctx.out_shape[2:],
        bias=args.get("bias") is not None, transposed=transposed,
        batch=ctx.in_shape[0])  # the model runs at batch 1: more is a folded batch


# The weight operand of each matrix product that is a linear layer when it holds a weight.
_WEIGHT_ARG = {"linear": "weight", "addmm": "mat2", "mm": "mat2", "matmul": "other"}


def _linear_attrs(ctx: _Ctx) -> dict[str, Any]:
    op = ctx.record.op
    shape = _weight_shape(ctx, _WEIGHT_ARG[op])
    # linear stores its weight (out, in); addmm/mm/matmul take it transposed, (in, out)
    out_f, in_f = shape if op == "linear" else shape[::-1]
    has_bias = ctx.record.args.get("bias") is not None if op == "linear" else op == "addmm"
    return linear_attrs(in_f, out_f, _rows_shape(ctx.out_shape), has_bias, _rows_shape(ctx.in_shape))


def _rows_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The leading dims a linear layer is applied over, without the batch axis (size 1).

    The batch axis is not always first: nn.MultiheadAttention runs on (tokens, batch, C)."""
    leading = list(shape[:-1])
    if 1 in leading:
        leading.remove(1)
    return tuple(leading)


# Matrix products by their two operands' argument names: MACs whatever the operands are
# (activations, parameters or constants).
_PRODUCT_OPERANDS = {"mm": ("self", "mat2"), "addmm": ("mat1", "mat2"), "bmm": ("self", "mat2"),
                     "baddbmm": ("batch1", "batch2"), "addbmm": ("batch1", "batch2"),
                     "matmul": ("self", "other")}
_ATTENTION = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_cudnn_attention")


def _opaque_attrs(ctx: _Ctx) -> dict[str, Any]:
    """Opaque ops keep their channels pinned; matrix products record their dimensions."""
    op, args = ctx.record.op, ctx.record.args
    if op in _PRODUCT_OPERANDS:
        a, b = (_weight_shape(ctx, name) for name in _PRODUCT_OPERANDS[op])
        return {"matmuls": [matmul_dims(a, b)]} if a and b else {}
    if op in _ATTENTION:
        q, k, v = (_weight_shape(ctx, name) for name in ("query", "key", "value"))
        batch = math.prod(q[:-2])
        return {"matmuls": [(batch, q[-2], q[-1], k[-2]), (batch, q[-2], k[-2], v[-1])]}
    if op == "einsum" and len(args.get("tensors") or ()) == 2:
        shapes = [ctx.shapes[r.name] for r in args["tensors"]]
        return {"matmuls": [(1, 1, einsum_macs(args["equation"], shapes), 1)]}
    return {}


def _split_attrs(index: int, sizes: list[int]) -> dict[str, Any]:
    return {"channel_offset": sum(sizes[:index]), "out_channels": sizes[index]}


ATTRS_BY_KIND: Mapping[Kind, Callable[[_Ctx], dict[str, Any]]] = {
    Kind.CONV: _conv_attrs,
    Kind.LINEAR: _linear_attrs,
    Kind.OPAQUE: _opaque_attrs,
}


# -- channel axis propagation -----------------------------------------------------------------

def _axis_after(op: str, args: dict[str, Any], kind: Kind, in_shape: tuple[int, ...],
                in_axis: int | None, out_shape: tuple[int, ...]) -> int | None:
    """Which axis of the output holds the channels, or None when it is lost."""
    if kind == Kind.CONV:
        return 1
    if kind == Kind.LINEAR:
        return len(out_shape) - 1
    if in_axis is None or not out_shape:
        return None
    if op == "permute":
        dims = [d % len(in_shape) for d in args["dims"]]
        return dims.index(in_axis)
    if op in ("transpose", "t"):
        d0, d1 = (args.get("dim0", 0) % len(in_shape), args.get("dim1", 1) % len(in_shape))
        return {d0: d1, d1: d0}.get(in_axis, in_axis)
    if len(out_shape) == len(in_shape) and op not in _RESHAPE:
        return in_axis
    prefix = math.prod(in_shape[:in_axis])
    channels = in_shape[in_axis]
    for k in range(len(out_shape)):
        if math.prod(out_shape[:k]) == prefix and out_shape[k] % channels == 0:
            return k
    return None


# -- building the graph ------------------------------------------------------------------------

def _param_owner_name(key: str) -> str:
    for suffix in (".weight", "_weight"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _refs_in(values: Any) -> list[Ref]:
    """The Refs among ``values`` and inside their lists, in order."""
    refs = []
    for value in values:
        if isinstance(value, Ref):
            refs.append(value)
        elif isinstance(value, (list, tuple)):
            refs.extend(_refs_in(value))
    return refs


# Kinds whose params the cost rules derive from the weight shape: they always carry the
# count they own (0 for a second call of a shared layer, or a weight held in a buffer).
_WEIGHT_KINDS = (Kind.CONV, Kind.LINEAR)


def build_graph(program: Program, name: str) -> ChannelGraph:
    """Turn a captured :class:`Program` into a ChannelGraph (one node per ATen op).

    Ops computing on weights and constants only fold into their consumer; each parameter
    tensor is owned by the first op that reads it (shared weights: params once, MACs at
    every call); buffers are never params.

    Raises
    ------
    GraphError
        If the program has no tensor input.
    """
    if not program.user_inputs:
        raise GraphError(f"{name}: the captured program has no tensor input")
    builder = _Builder(program, name)
    builder.add_inputs()
    for order, record in enumerate(program.records):
        try:
            builder.add_record(order, record)
        except Exception as err:  # a bug in this module: surface it, with the op it met
            err.add_note(f"MorphScope bug: building {name!r} failed at {record.name} "
                         f"(aten.{record.op}, module {record.module_path or '<root>'!r})")
            raise
    builder.add_outputs()
    builder.graph.detached_params = builder.detached_params()
    return builder.graph


class _Builder:
    """The state of one :func:`build_graph` call, one method per step."""

    def __init__(self, program: Program, name: str) -> None:
        self.program = program
        self.shapes = program.shapes
        input_shape = self.shapes[program.user_inputs[0]][1:]
        self.image_rank = len(input_shape) + 1
        self.graph = ChannelGraph(name, "torch", input_shape)
        self.namer = Namer()
        self.producer: dict[str, str] = {}  # activation value -> graph node
        self.axes: dict[str, int | None] = {}  # activation value -> its channel axis
        # value -> the parameter keys it is computed from (constants: none)
        self.param_sources: dict[str, frozenset[str]] = {
            v: frozenset({k}) for v, k in program.parameters.items()}
        self.param_sources.update({c: frozenset() for c in program.constants})
        self.numel = {key: math.prod(self.shapes[v]) for v, key in program.parameters.items()}
        # Modules owning weights: their weightless ops (LayerNorm2d's permutes) are named
        # <module>.<op>, leaving the module's own name to the op that uses the weights.
        self.weight_owners = {key.rsplit(".", 1)[0] for key in program.parameters.values()}
        self.owned: set[str] = set()

    def add_inputs(self) -> None:
        for inp in self.program.user_inputs:
            shape = self.shapes[inp]
            self.producer[inp] = self.graph.add_op(
                self.namer.take(inp), Kind.INPUT, order=-1, out_channels=shape[1],
                out_spatial=tuple(shape[2:]), shape=tuple(shape[1:]))
            self.axes[inp] = 1

    def add_record(self, order: int, record: OpRecord) -> None:
        refs = _refs_in(record.args.values())
        act_refs = [r for r in refs if r.name in self.producer]
        param_refs = [r for r in refs if r.name in self.param_sources]
        data = record.args.get(_DATA_ARG.get(record.op, ""))
        if not act_refs and isinstance(data, Ref) and data.name in self.param_sources:
            act_refs = [self._constant_source(order, record, data)]
            param_refs = [r for r in param_refs if r != data]
        if not act_refs:  # computes on weights/constants only: fold into its consumer
            keys = frozenset().union(*(self.param_sources[r.name] for r in param_refs))
            for out in record.outputs:
                if out is not None:
                    self.param_sources[out] = keys
            return
        ctx = _Ctx(record, act_refs, param_refs, self.shapes, self.axes)
        kind = classify_aten(ctx)
        sources = self._sources(param_refs)
        keys = self._take_params(sources)
        attrs = self._op_attrs(order, record, kind, keys)
        base = self._base_name(record, kind, sources)
        if record.op in MULTI_OUTPUT_SPLITS:
            self._add_split_nodes(base, ctx, kind, attrs)
            return
        node = self.namer.take(base)
        kind_attrs = ATTRS_BY_KIND[kind](ctx) if kind in ATTRS_BY_KIND else {}
        self.graph.add_op(node, kind, **{**_generic_attrs(ctx), **attrs, **kind_attrs})
        for port, ref in enumerate(act_refs):
            self.graph.connect(self.producer[ref.name], node, port)
        out_name = record.outputs[0] if record.outputs else None
        if out_name is not None:
            self.producer[out_name] = node
            out_shape = self.shapes.get(out_name, ())
            axis = _axis_after(record.op, record.args, kind, ctx.in_shape, ctx.in_axis, out_shape)
            if axis is None and len(out_shape) == self.image_rank:
                axis = 1  # back to an NCHW map (after a channel shuffle's views)
            self.axes[out_name] = axis
            _set_channels(self.graph[node], out_shape, axis)

    def _constant_source(self, order: int, record: OpRecord, data: Ref) -> Ref:
        """A layer run on a constant (Swin V2's position-bias MLP): its MACs count, so the
        constant becomes a pinned source node instead of being folded away."""
        shape = self.shapes[data.name]
        keys = self._take_params(self._sources([data]))
        base = f"{record.module_path}.constant" if record.module_path else "constant"
        self.producer[data.name] = self.graph.add_op(
            self.namer.take(base), Kind.OPAQUE, op="constant", order=order,
            out_channels=shape[-1], params=sum(self.numel[k] for k in keys),
            trainable_params=sum(self.numel[k] for k in keys))
        self.axes[data.name] = len(shape) - 1
        return data

    def _sources(self, refs: list[Ref]) -> list[str]:
        """The parameter keys the values ``refs`` are computed from, sorted."""
        if not refs:
            return []
        return sorted(frozenset().union(*(self.param_sources[r.name] for r in refs)))

    def _take_params(self, sources: list[str]) -> list[str]:
        """The keys among ``sources`` that no earlier op owns; now owned."""
        keys = [k for k in sources if k not in self.owned]
        self.owned.update(keys)
        return keys

    def _op_attrs(self, order: int, record: OpRecord, kind: Kind, keys: list[str]) -> dict[str, Any]:
        attrs: dict[str, Any] = {"op": f"aten.{record.op}", "order": order}
        if keys or kind in _WEIGHT_KINDS:
            attrs["params"] = attrs["trainable_params"] = sum(self.numel[k] for k in keys)
        if keys:
            attrs["param_keys"] = keys
        weight = record.args.get("weight")
        if kind == Kind.BN and isinstance(weight, Ref) and weight.name in self.program.parameters:
            attrs["gamma_key"] = self.program.parameters[weight.name]
        groups = record.args.get("group", record.args.get("num_groups"))  # group_norm's groups
        if kind == Kind.BN and isinstance(groups, int) and groups > 1:
            attrs["norm_groups"] = groups
        return attrs

    def _base_name(self, record: OpRecord, kind: Kind, keys: list[str]) -> str:
        """Weight ops take their weight's name (a shared weight's later calls too)."""
        if keys and kind in (Kind.CONV, Kind.LINEAR, Kind.BN):
            return _param_owner_name(self._weight_key(record, keys))
        op = "flatten" if kind == Kind.FLATTEN else record.op  # a flattening view, either route
        if record.module_is_leaf and not keys and record.module_path not in self.weight_owners:
            return record.module_path or op
        return f"{record.module_path}.{op}" if record.module_path else op

    def _weight_key(self, record: OpRecord, keys: list[str]) -> str:
        weight = record.args.get("weight")
        if isinstance(weight, Ref) and weight.name in self.program.parameters:
            return self.program.parameters[weight.name]
        weights = [k for k in keys if k.endswith("weight")]  # a standardized weight and its gain
        return min(weights or keys, key=len)

    def _add_split_nodes(self, base: str, ctx: _Ctx, kind: Kind, attrs: dict[str, Any]) -> None:
        record = ctx.record
        sizes = _split_sizes(record, ctx.in_shape[ctx.in_axis]) if kind == Kind.SPLIT else []
        for index, out_name in enumerate(record.outputs):
            if out_name is None:
                continue
            node = self.namer.take(f"{base}.{index}")
            extra = _split_attrs(index, sizes) if kind == Kind.SPLIT else {}
            self.graph.add_op(node, kind, **{**_generic_attrs(ctx), **attrs, **extra})
            self.graph.connect(self.producer[ctx.act_refs[0].name], node, 0)
            self.producer[out_name] = node
            out_shape = ctx.shapes[out_name]
            # unbind drops the split axis: what was the channel axis is gone
            axis = ctx.in_axis if len(out_shape) == len(ctx.in_shape) else None
            self.axes[out_name] = axis
            _set_channels(self.graph[node], out_shape, axis)

    def add_outputs(self) -> None:
        for out in self.program.user_outputs:
            if out in self.producer:
                node = self.graph.add_op(self.namer.take("output"), Kind.OUTPUT,
                                         order=len(self.program.records),
                                         in_channels=self.graph[self.producer[out]].get("out_channels"))
                self.graph.connect(self.producer[out], node)

    def detached_params(self) -> dict[str, int]:
        """Parameters no op reads (training-only heads), by module path."""
        detached: dict[str, int] = {}
        for key in set(self.program.parameters.values()) - self.owned:
            module = key.rsplit(".", 1)[0] if "." in key else ""
            detached[module] = detached.get(module, 0) + self.numel[key]
        return dict(sorted(detached.items()))


def _generic_attrs(ctx: _Ctx) -> dict[str, Any]:
    axis = ctx.in_axis
    attrs: dict[str, Any] = {}
    if axis is not None:
        attrs["in_channels"] = ctx.in_shape[axis]
    if len(ctx.in_shape) > 2 and axis == 1:
        attrs["in_spatial"] = tuple(ctx.in_shape[2:])
    return attrs


def _set_channels(attrs: dict[str, Any], out_shape: tuple[int, ...], axis: int | None) -> None:
    if axis is None or not out_shape:
        return
    attrs.setdefault("out_channels", out_shape[axis])
    if axis == 1 and len(out_shape) > 2:
        attrs.setdefault("out_spatial", tuple(out_shape[2:]))


def _split_sizes(record: OpRecord, channels: int) -> list[int]:
    """Channel counts of each output of split/split_with_sizes/chunk/unbind."""
    args = record.args
    if record.op == "split_with_sizes" or isinstance(args.get("split_size"), list):
        return list(args.get("split_sizes") or args["split_size"])
    if record.op == "unbind":
        return [1] * channels
    if record.op == "chunk":
        step = -(-channels // args["chunks"])
    else:
        step = args["split_size"]
    return [min(step, channels - start) for start in range(0, channels, step)]
