"""Keras 3 models -> ChannelGraph (keras imported lazily).

Entry points: :func:`load_keras_model` (a built ``keras.Model``), :func:`load_keras_file`
(``.keras`` / ``.h5``, loaded with ``safe_mode=True, compile=False``) and
:func:`load_keras_application` (``keras:NAME``, ``weights=None``).

The walk follows Keras' own execution order (``_nodes_by_depth``, as ``Function`` runs its
graph), so raw ``a + b`` and ``ops.concatenate`` calls, which appear only as operations, are
seen too (DESIGN section 10). Nested models are flattened: their ops are named
``outer_layer/inner_layer``. SeparableConv layers become two ops, ``NAME/depthwise`` and
``NAME/pointwise``. Channels are the last axis, except after ``channels_first`` layers (and
on bn's own axis). Each variable is owned by the first op that reads it: a shared layer or a
nested model called twice costs MACs at every call and params once. Composite layers
(MultiHeadAttention, LSTM, GRU, SimpleRNN, Bidirectional, EinsumDense) stay opaque and
count their matrix products by formula (:data:`COMPOSITE_PRODUCTS`), as do the raw
``ops.matmul`` / ``ops.einsum`` calls; a subclass of a composite (keras_hub's
``CachedMultiHeadAttention``) gets its ancestor's formula. Any other layer with sublayers
(keras_hub's encoders, blocks and embeddings), or whose call runs a matrix product, is walked:
its ``call`` is run on symbolic inputs of batch 1, which records its sublayers and raw ops as
a functional graph, flattened like a nested model. A model built for any length (keras_hub's
text backbones), called on a batch-folded tensor, or running raw ops or unknown layers (which
can fold patches or windows into the batch axis) is run again at the sizes it is called with,
so folded batches have their sizes. Composite formulas read their operands by the call's
signature (query, value, key), not by the order of the node's tensors, which sorts keyword
arguments by name. An opaque op whose products are not counted (a call that cannot be traced,
a product with no formula) is never silent: it is named in an :class:`UncountedMacsWarning`,
in the graph's ``notes`` and in its node's ``uncounted`` field.
"""

from __future__ import annotations

import math
import contextlib
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from morphscope.errors import GraphError, UnsafeFileError, UnsupportedFileError
from morphscope.importers.keras_legacy import normalized_keras_file
from morphscope.graph import ChannelGraph, Kind
from morphscope.importers.nodes import Namer, conv_attrs, first_line, linear_attrs, param_attrs
from morphscope.importers.products import einsum_macs, matmul_dims

KERAS_TO_KIND: Mapping[str, Kind] = {
    **dict.fromkeys(("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
                     "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D"), Kind.CONV),
    "Dense": Kind.LINEAR,
    **dict.fromkeys(("BatchNormalization", "LayerNormalization", "GroupNormalization"), Kind.BN),
    **dict.fromkeys(("Add", "Subtract", "Average", "Maximum", "Minimum",
                     "CustomScaleLayer"),  # InceptionResNetV2: residual + scale * branch
                    Kind.ADD),
    **dict.fromkeys(("Multiply", "Divide", "LayerScale"), Kind.MUL),
    "Concatenate": Kind.CONCAT,
    **dict.fromkeys(("Activation", "ReLU", "Softmax", "LeakyReLU", "PReLU", "ELU", "Relu",
                     "Relu6", "Sigmoid", "HardSigmoid", "HardSwish", "Silu", "Gelu", "Tanh"),
                    Kind.ACT),
    **dict.fromkeys(("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
                     "AveragePooling2D", "AveragePooling3D"), Kind.POOL),
    **dict.fromkeys(("GlobalAveragePooling1D", "GlobalAveragePooling2D",
                     "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
                     "GlobalMaxPooling3D"), Kind.GLOBAL_POOL),
    "Flatten": Kind.FLATTEN,
    **dict.fromkeys(("Reshape", "Permute"), Kind.RESHAPE),
    **dict.fromkeys(("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D",
                     "Cropping2D", "Cropping3D"), Kind.PAD),
    **dict.fromkeys(("UpSampling1D", "UpSampling2D", "UpSampling3D", "Resizing"), Kind.RESIZE),
    **dict.fromkeys(("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                     "Rescaling", "Normalization", "Identity", "GaussianNoise",
                     "ActivityRegularization", "StochasticDepth",
                     "DropPath",  # keras_hub's stochastic depth
                     "ConvertToTensor"),  # a functional model's call converting its inputs
                    Kind.IDENTITY),
    "InputLayer": Kind.INPUT,
}


def import_keras():
    """Import keras quietly (TensorFlow's C++ start-up chatter off unless the user set it).

    Nothing on the Keras path imports torch, torchvision or triton (triton loaded after
    TensorFlow segfaults the process: DESIGN section 10), so any import order works.
    """
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "keras" not in sys.modules
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences its start-up notice
    with _stderr_fd_silenced() if quiet else contextlib.nullcontext():
        import keras  # TensorFlow's C++ logs ("Could not find cuda drivers") precede absl's set-up

    return keras


@contextmanager
def _stderr_fd_silenced():
    """File descriptor 2 to /dev/null for the body (C++ start-up lines bypass Python's stderr);
    an exception still propagates and prints once the descriptor is back."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def classify_keras(op: Any, axis: int = -1) -> Kind:
    """The Kind of a Keras layer or operation, by class name; unknown -> OPAQUE (pinned).

    ``axis`` is the channel axis of its input (-1, or 1 for ``channels_first`` maps)."""
    kind = KERAS_TO_KIND.get(type(op).__name__, Kind.OPAQUE)
    if kind == Kind.CONCAT and getattr(op, "axis", -1) not in (-1, None):
        rank = len(op.input[0].shape) if hasattr(op, "input") else 4
        return Kind.CONCAT if op.axis % rank == axis % rank else Kind.OPAQUE
    if kind == Kind.FLATTEN and _channels_first(op):
        return Kind.OPAQUE  # channel-major flatten order: pinned rather than guessed
    return kind


@dataclass(frozen=True)
class _Val:
    """A tensor during the walk: the node producing it, its shape (batch first) and the axis
    holding its channels (-1: channels last; 1 after ``channels_first`` layers)."""

    node: str
    shape: tuple[int | None, ...]
    axis: int = -1

    @property
    def channels(self) -> int | None:
        return self.shape[self.axis] if len(self.shape) >= 2 else None

    @property
    def spatial(self) -> tuple[int | None, ...]:
        """The non-batch, non-channel dims."""
        axis = self.axis % len(self.shape)
        return tuple(s for i, s in enumerate(self.shape) if i not in (0, axis))


def _shape(tensor: Any) -> tuple[int | None, ...]:
    return tuple(tensor.shape)


def _numel(weights: list[Any]) -> int:
    return sum(math.prod(w.shape) for w in weights)


def _channels_first(layer: Any) -> bool:
    return getattr(layer, "data_format", None) == "channels_first"


def _out_axis(layer: Any, kind: Kind, x: _Val | None, out: tuple) -> int:
    """The channel axis of a layer's output."""
    if _channels_first(layer) and len(out) > 2:
        return 1
    if kind in (Kind.LINEAR, Kind.GLOBAL_POOL, Kind.FLATTEN) or x is None:
        return -1
    return x.axis if len(out) == len(x.shape) else -1


def _in_axis(layer: Any, x: _Val | None) -> int:
    """The channel axis a layer reads: its own data format or bn axis, else its input's."""
    if _channels_first(layer):
        return 1
    axis = getattr(layer, "axis", None)
    if KERAS_TO_KIND.get(type(layer).__name__) == Kind.BN and isinstance(axis, int):
        return axis
    return x.axis if x is not None else -1


# -- per-kind attributes -------------------------------------------------------------------------

def _conv_attrs(layer: Any, x: _Val, out: _Val) -> dict[str, Any]:
    name = type(layer).__name__
    depthwise = name.startswith("Depthwise")
    return conv_attrs(
        in_channels=x.channels,
        out_channels=x.channels * layer.depth_multiplier if depthwise else layer.filters,
        groups=x.channels if depthwise else getattr(layer, "groups", 1),
        kernel=layer.kernel_size, stride=layer.strides, in_spatial=x.spatial,
        out_spatial=out.spatial, bias=layer.use_bias, transposed=name.endswith("Transpose"),
        batch=_folded(x.shape))


def _dense_attrs(layer: Any, x: _Val, out: _Val) -> dict[str, Any]:
    folded = (_folded(out.shape),) if _folded(out.shape) > 1 else ()
    return linear_attrs(x.shape[-1], layer.units, (*folded, *out.shape[1:-1]), layer.use_bias)


def _bn_attrs(layer: Any, x: _Val, out: _Val) -> dict[str, Any]:
    gamma = getattr(layer, "gamma", None)
    attrs = {"gamma_key": gamma.path} if getattr(layer, "scale", False) and gamma is not None else {}
    if getattr(layer, "groups", 1) > 1:  # GroupNormalization
        attrs["norm_groups"] = layer.groups
    return attrs


def _channel_attrs(x: _Val | None, out: _Val) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if x is not None and len(x.shape) >= 2:
        attrs["in_channels"] = x.channels
        if len(x.shape) > 2:
            attrs["in_spatial"] = x.spatial
    if len(out.shape) >= 2:
        attrs["out_channels"] = out.channels
        if len(out.shape) > 2:
            attrs["out_spatial"] = out.spatial
    return attrs


ATTRS_BY_KIND: Mapping[Kind, Callable[[Any, _Val, _Val], dict[str, Any]]] = {
    Kind.CONV: _conv_attrs,
    Kind.LINEAR: _dense_attrs,
    Kind.BN: _bn_attrs,
}


# -- composite layers: their matrix products, counted by formula ---------------------------------
# Each returns (batch, m, k, n) products (MACs = batch*m*k*n) from the built layer and the
# shapes of its inputs (batch 1); the node stays opaque (pinned channels).

def _positions(shape: tuple) -> int:
    """Tokens, time steps or pixels: the dims between batch and features."""
    return math.prod(shape[1:-1])


def _folded(shape: tuple) -> int:
    """The batch axis' size: 1 for the model's own batch (unknown), more for a batch-folded
    tensor inside a walked composite (windows, patches), whose products count per element."""
    return shape[0] or 1


def _attention_products(layer: Any, inputs: list[tuple]) -> list[tuple[int, int, int, int]]:
    """MultiHeadAttention: q, k, v projections, q k^T and attention x v per head, output."""
    query, value = inputs[0], inputs[1] if len(inputs) > 1 else inputs[0]
    tq, tv, batch = _positions(query), _positions(value), _folded(query)
    heads, key_dim, value_dim = batch * layer._num_heads, layer._key_dim, layer._value_dim
    kernels = [math.prod(d.kernel.shape) for d in (layer._query_dense, layer._key_dense,
                                                   layer._value_dense, layer._output_dense)]
    return [(batch * tq, 1, kernels[0], 1), (batch * tv, 1, kernels[1], 1),
            (batch * tv, 1, kernels[2], 1), (heads, tq, key_dim, tv), (heads, tq, tv, value_dim),
            (batch * tq, 1, kernels[3], 1)]


_GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}  # kernels per step: (in + units) x gates*units


def _recurrent_products(layer: Any, inputs: list[tuple]) -> list[tuple[int, int, int, int]]:
    """SimpleRNN/GRU/LSTM: every step multiplies the input by the input kernel (in x g*u) and
    the state by the recurrent kernel (u x g*u); g = 1, 3, 4 gates."""
    steps, features = _positions(inputs[0]) * _folded(inputs[0]), inputs[0][-1]
    gated = _GATES[type(layer).__name__] * layer.units
    return [(steps, 1, features, gated), (steps, 1, layer.units, gated)]


def _bidirectional_products(layer: Any, inputs: list[tuple]) -> list[tuple[int, int, int, int]]:
    """Bidirectional: the forward and the backward layer, each on the whole sequence."""
    return [*_composite_products(layer.forward_layer, inputs),
            *_composite_products(layer.backward_layer, inputs)]


def _einsum_dense_products(layer: Any, inputs: list[tuple]) -> list[tuple[int, int, int, int]]:
    """EinsumDense: the product of every index size of the input and the kernel."""
    shapes = [tuple(s or 1 for s in inputs[0]), tuple(layer.kernel.shape)]
    return [(1, 1, einsum_macs(layer.equation, shapes), 1)]


def _einsum_products(op: Any, inputs: list[tuple]) -> list[tuple[int, int, int, int]]:
    """``ops.einsum`` on two activations (attention scores): every index size multiplied."""
    shapes = [tuple(s or 1 for s in shape) for shape in inputs]
    return [(1, 1, einsum_macs(op.subscripts, shapes), 1)] if len(inputs) == 2 else []


def _matmul_products(op: Any, inputs: list[tuple]) -> list[tuple[int, int, int, int]]:
    """``ops.matmul`` on two activations: (broadcast batch, m, k, n)."""
    return [matmul_dims(*(tuple(s or 1 for s in shape) for shape in inputs))] if len(inputs) == 2 else []


def _dot_product_attention_products(op: Any, inputs: list[tuple]) -> list[tuple[int, int, int, int]]:
    """``ops.dot_product_attention`` on query (B, T, N, H), key (B, S, N, H) and value
    (B, S, N, Hv): q k^T and attention x v per batch and head."""
    if len(inputs) < 3 or any(len(shape) != 4 for shape in inputs[:3]):
        return []
    (b, t, n, h), (_, s, _, _), (_, _, _, hv) = (tuple(d or 1 for d in x) for x in inputs[:3])
    return [(b * n, t, h, s), (b * n, t, s, hv)]


COMPOSITE_PRODUCTS: Mapping[str, Callable[[Any, list[tuple]], list[tuple[int, int, int, int]]]] = {
    "MultiHeadAttention": _attention_products,
    **dict.fromkeys(_GATES, _recurrent_products),
    "Bidirectional": _bidirectional_products,
    "EinsumDense": _einsum_dense_products,
    "Einsum": _einsum_products,  # keras.ops.einsum, recorded when a composite is walked
    "Matmul": _matmul_products,  # keras.ops.matmul
    "DotProductAttention": _dot_product_attention_products,  # keras.ops.dot_product_attention
}


def _composite_rule(op: Any) -> Callable[[Any, list[tuple]], list[tuple[int, int, int, int]]] | None:
    """The formula of ``op``'s class or of its nearest ancestor that has one: a subclass of a
    known composite (keras_hub's ``CachedMultiHeadAttention`` is a ``MultiHeadAttention``)
    computes the same products."""
    for cls in type(op).__mro__:
        rule = COMPOSITE_PRODUCTS.get(cls.__name__)
        if rule is not None:
            return rule
    return None


def _composite_products(layer: Any, inputs: list[tuple]) -> list[tuple[int, int, int, int]]:
    rule = _composite_rule(layer)
    return rule(layer, inputs) if rule is not None else []


def _signature_shapes(node: Any, args: list[_Val]) -> list[tuple]:
    """The shapes of a call's tensor arguments in the order of its ``call`` signature, with
    constant operands (a variable a walked layer reads: ``ops.einsum(eq, x, self.kernel)``)
    at their own shapes.

    The node's own tensor list flattens keyword arguments sorted by name: keras_hub calls
    attention as ``query=x, value=x, attention_mask=m``, which that list starts with the mask."""
    import inspect

    by_id = {id(t): a.shape for t, a in zip(node.input_tensors, args)}
    call_args, call_kwargs = node.arguments.args, node.arguments.kwargs
    try:
        bound = inspect.signature(node.operation.call).bind(*call_args, **call_kwargs)
        ordered: list[Any] = list(bound.arguments.values())
    except (TypeError, ValueError):  # no inspectable signature: positional, then keywords
        ordered = [call_args, call_kwargs]
    return [by_id[id(t)] if id(t) in by_id else tuple(t.shape)
            for t in import_keras().tree.flatten(ordered)
            if id(t) in by_id or _is_constant_array(t)]


def _is_constant_array(value: Any) -> bool:
    """A variable or concrete array among a call's arguments (not a Python number)."""
    shape = getattr(value, "shape", None)
    return isinstance(shape, tuple) or (shape is not None and hasattr(shape, "as_list"))


# -- the walk ------------------------------------------------------------------------------------

class _Walker:
    def __init__(self, graph: ChannelGraph) -> None:
        self.graph = graph
        self.order = 0
        self.namer = Namer()
        self.counted: set[int] = set()  # ids of variables already owned by an op
        self.uncounted: dict[str, str] = {}  # opaque ops whose products MACs miss: why

    def add(self, name: str, kind: Kind, inputs: list[_Val], **attrs: Any) -> str:
        unique = self.namer.take(name)
        self.graph.add_op(unique, kind, order=self.order, **attrs)
        self.order += 1
        for port, val in enumerate(inputs):
            self.graph.connect(val.node, unique, port)
        return unique

    def own_weights(self, variables: list[Any], trainable: list[Any]) -> dict[str, int]:
        """Parameter counts of the variables no earlier op owns (each variable once, by
        identity: shared layers and nested models used twice count once)."""
        new = [v for v in variables if id(v) not in self.counted]
        self.counted.update(id(v) for v in new)
        trainable_ids = {id(v) for v in trainable}
        return param_attrs(_numel(new), _numel([v for v in new if id(v) in trainable_ids]))

    def walk(self, model: Any, inputs: list[_Val], scope: str,
             loose: list[Any] | None = None) -> list[_Val]:
        """Run ``model``'s graph symbolically on ``inputs``; return the values of its outputs.

        ``loose``: variables of a walked composite that no op of its graph holds (a class
        token, a position table, a sublayer called on a constant); they enter the graph as
        constants, and the last op that reads a constant (else its last op) owns them."""
        values: dict[int, _Val] = {id(t): v for t, v in zip(model.inputs, inputs)}
        nodes = [node for depth in sorted(model._nodes_by_depth, reverse=True)
                 for node in model._nodes_by_depth[depth]
                 if node.operation is not None and not node.is_input]
        holder = next((n for n in reversed(nodes) if _reads_constant(n)),
                      nodes[-1] if nodes else None)
        for node in nodes:
            if any(id(t) not in values for t in node.input_tensors):
                continue
            args = [values[id(t)] for t in node.input_tensors]
            outs = self.call(node, args, scope, loose if node is holder else None)
            for tensor, val in zip(node.outputs, outs):
                values[id(tensor)] = val
        return [values[id(t)] for t in model.outputs]

    def call(self, node: Any, args: list[_Val], scope: str,
             loose: list[Any] | None = None) -> list[_Val]:
        op, out_shapes = node.operation, [_shape(t) for t in node.outputs]
        name = f"{scope}{op.name}"
        nested = _functional_graph(op)
        if nested is not None:  # a nested model: flatten it, at the sizes it is called with
            return self.walk(_at_call_sizes(nested, args), args, scope=f"{name}/", loose=loose)
        try:
            traced = _traced_call(op, node)
        except _Untraced as err:  # stays opaque, and the import says its MACs are missing
            traced, untraced = None, str(err)
        else:
            untraced = None
        if traced is not None:  # a composite layer: walk its call
            graph, firsts = traced
            held = {id(v) for inner in graph.operations for v in getattr(inner, "weights", [])}
            own = [*(v for v in op.weights if id(v) not in held), *(loose or ())]
            return self.walk(graph, [args[i] for i in firsts], scope=f"{name}/", loose=own)
        if type(op).__name__.startswith("SeparableConv"):
            return [self.separable(op, args[0], out_shapes[0], name)]
        x = args[0] if args else None
        if x is not None:
            x = _Val(x.node, x.shape, _in_axis(op, x))
        kind = classify_keras(op, x.axis if x is not None else -1)
        out = _Val("", out_shapes[0], _out_axis(op, kind, x, out_shapes[0]))
        attrs = {"op": type(op).__name__, **_channel_attrs(x, out)}
        attrs.update(ATTRS_BY_KIND.get(kind, lambda *_: {})(op, x, out))
        weights = self.own_weights([*getattr(op, "weights", []), *(loose or ())],
                                   [*getattr(op, "trainable_weights", []), *(loose or ())])
        if weights["params"] or kind in (Kind.CONV, Kind.LINEAR):
            attrs.update(weights)
        products = _composite_products(op, _signature_shapes(node, args))
        if products:
            attrs["matmuls"] = products
        elif kind == Kind.OPAQUE:
            reason = untraced or (None if _walks_inside(op) else _uncounted_reason(op))
            if reason:
                attrs["uncounted"] = reason
        node = self.add(name, kind, args, **attrs)
        if "uncounted" in attrs:
            self.uncounted[node] = f"{type(op).__name__}: {attrs['uncounted']}"
        return [_Val(node, shape, out.axis) for shape in out_shapes]

    def separable(self, layer: Any, x: _Val, out: tuple, name: str) -> _Val:
        trainable = list(layer.trainable_weights)
        in_channels = x.shape[-1]
        mid = in_channels * layer.depth_multiplier
        mid_val = _Val("", (*out[:-1], mid))
        out_val = _Val("", out)
        depthwise = self.add(
            f"{name}/depthwise", Kind.CONV, [x], op=type(layer).__name__,
            **conv_attrs(in_channels, mid, in_channels, layer.kernel_size, layer.strides,
                         x.spatial, out_val.spatial, bias=False, transposed=False),
            **self.own_weights([layer.depthwise_kernel], trainable))
        pointwise_weights = [w for w in layer.weights if w is not layer.depthwise_kernel]
        ones = (1,) * len(out_val.spatial)
        pointwise = self.add(
            f"{name}/pointwise", Kind.CONV, [_Val(depthwise, mid_val.shape)], op=type(layer).__name__,
            **conv_attrs(mid, layer.filters, 1, ones, ones, out_val.spatial, out_val.spatial,
                         bias=layer.use_bias, transposed=False),
            **self.own_weights(pointwise_weights, trainable))
        return _Val(pointwise, out)


def _walks_inside(op: Any) -> bool:
    """A layer that no registry knows (keras_hub's encoders, blocks, custom layers)."""
    name = type(op).__name__
    return (name not in KERAS_TO_KIND and _composite_rule(op) is None
            and hasattr(op, "_flatten_layers") and not name.startswith("SeparableConv"))


def _has_sublayers(op: Any) -> bool:
    return any(True for _ in op._flatten_layers(include_self=False, recursive=False))


# keras.ops products with no formula here: an op of these stays opaque and is reported
UNCOUNTED_PRODUCT_OPS = frozenset(("Conv", "ConvTranspose", "DepthwiseConv", "SeparableConv",
                                   "Dot", "Tensordot", "Inner", "Vdot"))


def _holds_products(graph: Any) -> bool:
    """Whether a traced call runs a matrix product (``ops.matmul``, ``ops.einsum``, ...)."""
    return any(_composite_rule(op) is not None or type(op).__name__ in UNCOUNTED_PRODUCT_OPS
               for op in graph.operations)


class _Untraced(Exception):
    """A layer's call that cannot run on symbolic inputs; the message says why."""


def _traced_call(op: Any, node: Any) -> tuple[Any, list[int]] | None:
    """A layer's call run on fresh symbolic inputs (batch 1, the node's other arguments as
    given): a functional graph of its sublayers and raw ops, and for each of its inputs the
    index of the node input it stands for. Walked: layers with sublayers, and leaf layers
    whose call runs a matrix product (a custom layer's ``ops.einsum`` with its own kernel);
    None for the rest (one opaque op, as before). Raises :class:`_Untraced` for a call that
    cannot run symbolically: it stays opaque and is reported."""
    if not _walks_inside(op):
        return None
    keras = import_keras()
    fresh: dict[int, Any] = {}
    firsts: list[int] = []
    for index, tensor in enumerate(node.input_tensors):
        if id(tensor) not in fresh:
            shape = (_folded(tensor.shape), *tensor.shape[1:])  # the model at batch 1
            fresh[id(tensor)] = keras.Input(batch_shape=shape, dtype=tensor.dtype)
            firsts.append(index)
    args, kwargs = node.arguments.fill_in(fresh)
    kwargs = _accepted(op.call, kwargs)
    try:
        with _specs_from_call(op):
            outputs = [t for t in keras.tree.flatten(op.call(*args, **kwargs)) if t is not None]
        if len(outputs) != len(node.outputs):
            raise _Untraced(f"its call on symbolic inputs gave {len(outputs)} outputs, the "
                            f"model's call {len(node.outputs)}")
        if not all(isinstance(t, keras.KerasTensor) for t in outputs):
            return _constant_output(op)
        graph = keras.Model([fresh[id(node.input_tensors[i])] for i in firsts], outputs)
    except _Untraced:
        raise
    except Exception as err:  # noqa: BLE001 - a user's call() can raise anything on symbolic inputs
        raise _Untraced(f"its call() cannot run on symbolic inputs ({type(err).__name__}: "
                        f"{first_line(err)[:200]})") from err
    if not _has_sublayers(op) and not _holds_products(graph):
        return None  # a leaf layer of elementwise ops and lookups: no products to count
    return graph, firsts


def _constant_output(op: Any) -> None:
    """A call whose output does not depend on its symbolic inputs but on their static sizes
    (keras_hub's ``PositionEmbedding`` slices its table to the input's length): it ran
    eagerly, so no graph records its products. A lookup table (an ``Embedding`` or
    ``PositionEmbedding``) or a leaf layer without weight matrices has none (one opaque op, as
    before); any other is reported."""
    lookup = any(c.__name__ in ("Embedding", "PositionEmbedding") for c in type(op).__mro__)
    if lookup or (not _has_sublayers(op) and all(len(w.shape) < 2 for w in op.weights)):
        return None
    raise _Untraced("its call computes its output from its weights alone, outside the graph")


def _accepted(call: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``call`` takes: a node records ``training`` (and ``mask``) even
    for a call without them, which ``Layer.__call__`` passes only to calls that take them."""
    import inspect

    try:
        params = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _uncounted_reason(op: Any) -> str | None:
    """Why the MACs of an opaque op that is not walked are missing, or None: a matrix product
    with no formula (``ops.tensordot``, ``ops.conv``), or a composite whose formula found no
    products for its operands (a ``Bidirectional`` around an unknown layer)."""
    if type(op).__name__ in UNCOUNTED_PRODUCT_OPS or _composite_rule(op) is not None:
        return "a matrix product with no formula for these operands"
    return None


_ABSENT = object()


@contextmanager
def _specs_from_call(op: Any) -> Iterator[None]:
    """While ``op``'s call runs on symbolic inputs, a sublayer whose ``compute_output_spec``
    does not take the call's arguments gets its output spec from running its ``call`` on the
    backend's placeholders, as Keras does when it builds the model on real tensors.

    keras_hub's ``CachedMultiHeadAttention`` inherits ``MultiHeadAttention``'s
    ``compute_output_spec``, which has no ``cache`` argument: without this, the decoder
    calling it cannot be traced (GPT2's decoder stayed opaque)."""
    import inspect

    from keras.src.backend import compute_output_spec

    patched = []
    for layer in op._flatten_layers(include_self=False, recursive=True):
        own = layer.compute_output_spec
        try:
            signature = inspect.signature(own)
        except (TypeError, ValueError):
            continue

        def spec(*args: Any, _own: Any = own, _sig: Any = signature, _layer: Any = layer,
                 **kwargs: Any) -> Any:
            try:
                _sig.bind(*args, **kwargs)
            except TypeError:
                return compute_output_spec(_layer.call, *args, **kwargs)
            return _own(*args, **kwargs)

        patched.append((layer, layer.__dict__.get("compute_output_spec", _ABSENT)))
        object.__setattr__(layer, "compute_output_spec", spec)
    try:
        yield
    finally:
        for layer, before in patched:
            if before is _ABSENT:
                object.__delattr__(layer, "compute_output_spec")
            else:
                object.__setattr__(layer, "compute_output_spec", before)


def _at_call_sizes(graph: Any, args: list[_Val], keep_names: bool = False) -> Any:
    """A model run again on symbolic inputs of the sizes it is called with (batch 1, or the
    folded batch it is given), so its ops have the sizes their products need; the same
    layers, so weights are still shared. Only where a size would otherwise be unknown: a
    model built for any length (keras_hub's text backbones), called on a batch-folded tensor,
    or running ops that can fold positions into the batch axis (:func:`_may_fold_batch`),
    whose output batch a graph built for any batch leaves unknown (counted as 1).

    ``keep_names``: the fresh inputs take the names of the model's own (its input ops)."""
    sizes_known = all(None not in _shape(t)[1:] for t in graph.inputs)
    batch_known = all(_shape(t)[0] == _folded(a.shape) for t, a in zip(graph.inputs, args))
    if sizes_known and (batch_known or _folded_at_most_one(args)) and not _may_fold_batch(graph):
        return graph
    keras = import_keras()
    fresh = [keras.Input(batch_shape=(_folded(a.shape), *a.shape[1:]), dtype=t.dtype,
                         name=t._keras_history.operation.name if keep_names else None)
             for t, a in zip(graph.inputs, args)]
    outputs = graph.call(keras.tree.pack_sequence_as(graph._inputs_struct, fresh), training=False)
    return keras.Model(fresh, keras.tree.flatten(outputs))


def _folded_at_most_one(args: list[_Val]) -> bool:
    return all(_folded(a.shape) == 1 for a in args)


def _may_fold_batch(graph: Any) -> bool:
    """Whether a graph runs an op outside the registries: a raw ``keras.ops`` call (a
    ``reshape`` putting patches or windows into the batch axis) or an unknown layer. Keras
    layers of the registries keep the batch axis; nested models are checked when walked."""
    keras = import_keras()
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            op = node.operation
            if op is None or node.is_input or _functional_graph(op) is not None:
                continue
            if not isinstance(op, keras.layers.Layer) or _walks_inside(op):
                return True
    return False


def _reads_constant(node: Any) -> bool:
    """Whether an op reads a tensor that is not a graph value (a variable's value)."""
    symbolic = {id(t) for t in node.input_tensors}
    flat = import_keras().tree.flatten((node.arguments.args, node.arguments.kwargs))
    return any(hasattr(a, "shape") and id(a) not in symbolic for a in flat)


def _functional_graph(op: Any) -> Any | None:
    """The functional graph of a model (a Sequential keeps one in ``_functional``), else None."""
    graph = getattr(op, "_functional", None) or op
    return graph if hasattr(graph, "_nodes_by_depth") else None


def load_keras_model(model: Any, name: str | None = None) -> ChannelGraph:
    """Turn a built functional or sequential ``keras.Model`` into a ChannelGraph.

    Raises
    ------
    GraphError
        If the model has no layer graph (a subclassed model, a Sequential without an input
        shape) or an input size is unknown.
    """
    name = name or model.name
    functional = _functional_graph(model)
    if functional is None or not getattr(functional, "inputs", None):
        raise GraphError(_no_graph_advice(model, name))
    model = functional
    input_shape = _shape(model.inputs[0])[1:]
    if any(None in _shape(t)[1:] for t in model.inputs):
        raise GraphError(_unknown_sizes_advice(model, name))
    try:  # at batch 1 where a batch-folding op would leave sizes unknown
        model = _at_call_sizes(model, [_Val("", _shape(t)) for t in model.inputs], keep_names=True)
    except Exception:  # noqa: BLE001 - keep the graph as built; its folded batches count as 1
        model = functional
    first_axes = _input_axes(model)
    graph = ChannelGraph(name, "keras", _channels_first_shape(input_shape, first_axes[0]))
    walker = _Walker(graph)
    inputs = []
    for tensor, axis in zip(model.inputs, first_axes):
        layer = tensor._keras_history.operation
        val = _Val("", _shape(tensor), axis)
        node = walker.add(layer.name, Kind.INPUT, [], op="InputLayer",
                          out_channels=val.channels, out_spatial=val.spatial,
                          shape=tuple(val.shape[1:]))
        inputs.append(_Val(node, val.shape, axis))
    for index, out in enumerate(walker.walk(model, inputs, scope="")):
        walker.add("output" if index == 0 else f"output_{index}", Kind.OUTPUT, [out],
                   in_channels=out.channels)
    graph.detached_params = _unwalked_params(functional, walker.counted)
    if walker.uncounted:
        note = _uncounted_note(walker.uncounted)
        graph.notes.append(note)
        warnings.warn(f"{name}: {note}", UncountedMacsWarning, stacklevel=2)
    return graph


class UncountedMacsWarning(UserWarning):
    """An import whose MAC total misses the products of opaque ops (named in the message and
    in the graph's ``notes``; each such op carries an ``uncounted`` field saying why)."""


def _uncounted_note(uncounted: Mapping[str, str]) -> str:
    shown = "; ".join(f"{op} ({why})" for op, why in list(uncounted.items())[:5])
    more = f"; and {len(uncounted) - 5} more" if len(uncounted) > 5 else ""
    return (f"MACs may be short: {len(uncounted)} opaque op{'s' if len(uncounted) > 1 else ''} "
            f"whose products, if any, are not in the total: {shown}{more}")


EXAMPLE_LENGTH = 128  # stands for an unknown size in the advice's code


def _unknown_sizes_advice(model: Any, name: str) -> str:
    """The refusal for a model built for any size: wrap it at the sizes to count, as code
    that runs (a ``keras.Input`` per input, in the structure the model takes)."""
    keras = import_keras()

    def example(tensor: Any, key: str | None = None) -> str:
        shape = tuple(EXAMPLE_LENGTH if s is None else s for s in _shape(tensor)[1:])
        dtype = "" if tensor.dtype == "float32" else f", dtype={str(tensor.dtype)!r}"
        named = "" if key is None else f", name={key!r}"  # a dict's keys name its inputs
        return f"keras.Input(shape={shape}{dtype}{named})"

    struct = getattr(model, "_inputs_struct", model.inputs[0])
    if isinstance(struct, dict):
        inputs = "{" + ", ".join(f"{k!r}: {example(t, k)}" for k, t in struct.items()) + "}"
    elif isinstance(struct, (list, tuple)):
        inputs = "[" + ", ".join(example(t) for t in keras.tree.flatten(struct)) + "]"
    else:
        inputs = example(struct)
    unknown = [_shape(t)[1:] for t in model.inputs if None in _shape(t)[1:]]
    return (f"{name}: input shape {unknown[0]} has unknown sizes; give keras.Input every "
            f"size: call the model on inputs of the sizes to count, `inputs = {inputs}; "
            "model = keras.Model(inputs, model(inputs))` (a sequence model: a fixed length; "
            f"{EXAMPLE_LENGTH} stands for the unknown sizes), and load that model or save it")


def _no_graph_advice(model: Any, name: str) -> str:
    cls = type(model).__name__
    if cls == "Sequential":
        return (f"{name}: a Sequential model without an input shape has no layer graph yet; "
                "start it with keras.Input(shape=...) and save it again")
    if cls not in ("Functional", "Model"):
        return (f"{name}: {cls} is a subclassed Keras model: its call() is Python code with "
                "no layer graph to read; build the same layers with the functional API "
                "(inputs = keras.Input(...); outputs = ...; keras.Model(inputs, outputs))")
    return f"{name}: a Keras model without inputs; build it from keras.Input(shape=...)"


def _input_axes(model: Any) -> list[int]:
    """Each input's channel axis: 1 when a ``channels_first`` layer reads it, else -1."""
    axes = []
    for tensor in model.inputs:
        readers = [node.operation for nodes in model._nodes_by_depth.values() for node in nodes
                   if node.operation is not None and any(t is tensor for t in node.input_tensors)]
        axes.append(1 if any(_channels_first(r) for r in readers) else -1)
    return axes


def _channels_first_shape(shape: tuple, axis: int) -> tuple:
    """A per-example shape (no batch axis) written channels first, (C, H, W)."""
    if axis == 1 or len(shape) < 2:
        return tuple(shape)
    return (shape[-1], *shape[:-1])


def _unwalked_params(model: Any, counted: set[int]) -> dict[str, int]:
    """Weights of layers the inference graph never reads (kept in the parameter total), by
    the layer that created them."""
    out: dict[str, int] = {}
    seen = set(counted)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        own = [v for v in [*layer._trainable_variables, *layer._non_trainable_variables]
               if id(v) not in seen]
        if own:
            seen.update(id(v) for v in own)
            out[layer.name] = out.get(layer.name, 0) + _numel(own)
    return out


def load_keras_application(name: str, input_shape: tuple[int, ...] | None = None) -> ChannelGraph:
    """``keras.applications.NAME(weights=None)``, at its default input size unless given
    ``input_shape`` (channels first, C, H, W)."""
    model = build_keras_application(name, input_shape)
    return load_keras_model(model, name=f"keras:{name}")


def keras_application_names() -> list[str]:
    """Every model builder in ``keras.applications`` (``ResNet50``, ``MobileNetV2``, ...)."""
    import inspect

    keras = import_keras()

    return sorted(n for n, f in inspect.getmembers(keras.applications, inspect.isfunction)
                  if n[0].isupper())


def build_keras_application(name: str, input_shape: tuple[int, ...] | None = None) -> Any:
    """Build ``keras.applications.NAME`` with random weights."""
    keras = import_keras()

    available = keras_application_names()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5, cutoff=0.6) or available[:5]
        raise UnsupportedFileError(f"keras:{name}: no such keras.applications model; closest: "
                                   f"{', '.join(close)} ({len(available)} in keras.applications)")
    kwargs: dict[str, Any] = {"weights": None}
    if input_shape is not None:
        c, *spatial = input_shape
        kwargs["input_shape"] = (*spatial, c)
    try:
        model = getattr(keras.applications, name)(**kwargs)
        if None in tuple(model.inputs[0].shape)[1:]:  # MobileNetV3 defaults to any size
            model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    except ValueError as err:
        raise GraphError(f"keras:{name}: cannot build at input {input_shape}: {err}") from err
    return model


def load_keras_file_model(path: str | Path) -> Any:
    """Load a ``.keras`` or legacy ``.h5`` model file with ``safe_mode=True, compile=False``.

    Raises
    ------
    UnsafeFileError
        If the file holds code (a Lambda layer with Python bytecode) that safe mode refuses.
    UnsupportedFileError
        If the file is truncated, corrupt or not a Keras model.
    """
    keras = import_keras()
    path = Path(path)
    try:
        with normalized_keras_file(path) as (source, _):  # tf_keras 2.x configs, see keras_legacy
            return keras.saving.load_model(source, compile=False, safe_mode=True)
    except UnsupportedFileError:
        raise
    except ValueError as err:
        text = str(err)
        if "safe_mode" in text or "unsafe" in text.lower():
            raise UnsafeFileError(f"{path}: refused, the file holds code (Lambda layer) that "
                                  "would run on load") from err
        raise UnsupportedFileError(f"{path}: not a readable Keras model ({first_line(text)})") from err
    except Exception as err:  # noqa: BLE001 - keras/h5py/zipfile raise many types on bad files
        raise UnsupportedFileError(f"{path}: not a readable Keras model "
                                   f"({type(err).__name__}: {first_line(err)})") from err


def load_keras_file(path: str | Path) -> ChannelGraph:
    """Load a ``.keras`` or legacy ``.h5`` model file safely and import it."""
    return load_keras_model(load_keras_file_model(path), name=str(path))
