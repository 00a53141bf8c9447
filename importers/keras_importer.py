"""Keras 3 models -> ChannelGraph (keras imported lazily).

Entry points: :func:`load_keras_model` (a built ``keras.Model``), :func:`load_keras_file`
(``.keras`` / ``.h5``, loaded with ``safe_mode=True, compile=False``) and
:func:`load_keras_application` (``keras:NAME``, ``weights=None``).

The walk follows Keras' own execution order (``_nodes_by_depth``, as ``Function`` runs its
graph), so raw ``a + b`` and ``ops.concatenate`` calls, which appear only as operations, are
seen too (DESIGN section 10). Nested models are flattened: their ops are named
``outer_layer/inner_layer``. SeparableConv layers become two ops, ``NAME/depthwise`` and
``NAME/pointwise``. Keras is channels-last: channels are the last axis of every tensor.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from morphscope.errors import GraphError, UnsafeFileError, UnsupportedFileError
from morphscope.importers.keras_legacy import normalized_keras_file
from morphscope.graph import ChannelGraph, Kind

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
                     "ActivityRegularization", "StochasticDepth"), Kind.IDENTITY),
    "InputLayer": Kind.INPUT,
}


def import_keras():
    """Import keras quietly (TensorFlow's C++ start-up chatter off unless the user set it).

    Triton (torch's compiler, loaded by torchvision) segfaults the process when it loads
    after TensorFlow (tensorflow-cpu 2.21, torch 2.14.1), so it is loaded first when present.
    """
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401 - load order matters, see above
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences its start-up notice
    import keras

    return keras


def classify_keras(op: Any) -> Kind:
    """The Kind of a Keras layer or operation, by class name; unknown -> OPAQUE (pinned)."""
    kind = KERAS_TO_KIND.get(type(op).__name__, Kind.OPAQUE)
    if kind == Kind.CONCAT and getattr(op, "axis", -1) not in (-1, None):
        return Kind.CONCAT if _is_last_axis(op) else Kind.OPAQUE
    return kind


def _is_last_axis(op: Any) -> bool:
    rank = len(op.input[0].shape) if hasattr(op, "input") else 4
    return op.axis % rank == rank - 1


@dataclass(frozen=True)
class _Val:
    """A tensor during the walk: the graph node producing it and its shape (batch first)."""

    node: str
    shape: tuple[int | None, ...]


def _shape(tensor: Any) -> tuple[int | None, ...]:
    return tuple(tensor.shape)


def _numel(weights: list[Any]) -> int:
    return sum(math.prod(w.shape) for w in weights)


# -- per-kind attributes -------------------------------------------------------------------------

def _conv_attrs(layer: Any, x: _Val, out: tuple) -> dict[str, Any]:
    name = type(layer).__name__
    in_channels = x.shape[-1]
    depthwise = name.startswith("Depthwise")
    out_channels = in_channels * layer.depth_multiplier if depthwise else layer.filters
    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "groups": in_channels if depthwise else getattr(layer, "groups", 1),
        "kernel": tuple(layer.kernel_size),
        "stride": tuple(layer.strides),
        "in_spatial": tuple(x.shape[1:-1]),
        "out_spatial": tuple(out[1:-1]),
        "bias": bool(layer.use_bias),
        "transposed": name.endswith("Transpose"),
    }


def _dense_attrs(layer: Any, x: _Val, out: tuple) -> dict[str, Any]:
    return {"in_channels": x.shape[-1], "out_channels": layer.units, "groups": 1, "kernel": (),
            "in_spatial": tuple(x.shape[1:-1]), "out_spatial": tuple(out[1:-1]),
            "bias": bool(layer.use_bias)}


def _bn_attrs(layer: Any, x: _Val, out: tuple) -> dict[str, Any]:
    gamma = getattr(layer, "gamma", None)
    return {"gamma_key": gamma.path} if getattr(layer, "scale", False) and gamma is not None else {}


def _channel_attrs(layer: Any, x: _Val | None, out: tuple) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if x is not None and len(x.shape) >= 2:
        attrs["in_channels"] = x.shape[-1]
        if len(x.shape) > 2:
            attrs["in_spatial"] = tuple(x.shape[1:-1])
    if len(out) >= 2:
        attrs["out_channels"] = out[-1]
        if len(out) > 2:
            attrs["out_spatial"] = tuple(out[1:-1])
    return attrs


ATTRS_BY_KIND: Mapping[Kind, Callable[[Any, _Val, tuple], dict[str, Any]]] = {
    Kind.CONV: _conv_attrs,
    Kind.LINEAR: _dense_attrs,
    Kind.BN: _bn_attrs,
}


# -- the walk ------------------------------------------------------------------------------------

class _Walker:
    def __init__(self, graph: ChannelGraph) -> None:
        self.graph = graph
        self.order = 0
        self.counted: set[int] = set()  # layers whose weights are already attributed
        self.opaque: list[str] = []

    def add(self, name: str, kind: Kind, inputs: list[_Val], **attrs: Any) -> str:
        unique, n = name, 0
        while unique in self.graph:
            n += 1
            unique = f"{name}_{n}"
        self.graph.add_op(unique, kind, order=self.order, **attrs)
        self.order += 1
        for port, val in enumerate(inputs):
            self.graph.connect(val.node, unique, port)
        return unique

    def own_weights(self, layer: Any) -> dict[str, int]:
        """Parameter counts for the first call of ``layer``; shared layers count once."""
        if id(layer) in self.counted or not getattr(layer, "weights", None):
            return {}
        self.counted.add(id(layer))
        return {"params": int(layer.count_params()),
                "trainable_params": _numel(layer.trainable_weights)}

    def walk(self, model: Any, inputs: list[_Val], scope: str) -> list[_Val]:
        """Run ``model``'s graph symbolically on ``inputs``; return the values of its outputs."""
        values: dict[int, _Val] = {id(t): v for t, v in zip(model.inputs, inputs)}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.operation is None or node.is_input:
                    continue
                if any(id(t) not in values for t in node.input_tensors):
                    continue
                args = [values[id(t)] for t in node.input_tensors]
                outs = self.call(node.operation, args, [_shape(t) for t in node.outputs], scope)
                for tensor, val in zip(node.outputs, outs):
                    values[id(tensor)] = val
        return [values[id(t)] for t in model.outputs]

    def call(self, op: Any, args: list[_Val], out_shapes: list[tuple], scope: str) -> list[_Val]:
        name = f"{scope}{op.name}"
        nested = _functional_graph(op)
        if nested is not None:  # a nested model: flatten it
            return self.walk(nested, args, scope=f"{name}/")
        if type(op).__name__.startswith("SeparableConv"):
            return [self.separable(op, args[0], out_shapes[0], name)]
        kind = classify_keras(op)
        x = args[0] if args else None
        attrs = {"op": type(op).__name__, **_channel_attrs(op, x, out_shapes[0])}
        attrs.update(ATTRS_BY_KIND.get(kind, lambda *_: {})(op, x, out_shapes[0]))
        attrs.update(self.own_weights(op))
        if kind == Kind.OPAQUE:
            self.opaque.append(name)
        node = self.add(name, kind, args, **attrs)
        return [_Val(node, shape) for shape in out_shapes]

    def separable(self, layer: Any, x: _Val, out: tuple, name: str) -> _Val:
        self.counted.add(id(layer))
        in_channels = x.shape[-1]
        mid = in_channels * layer.depth_multiplier
        mid_shape = (*out[:-1], mid)
        depthwise = self.add(
            f"{name}/depthwise", Kind.CONV, [x], op=type(layer).__name__,
            in_channels=in_channels, out_channels=mid, groups=in_channels,
            kernel=tuple(layer.kernel_size), stride=tuple(layer.strides),
            in_spatial=tuple(x.shape[1:-1]), out_spatial=tuple(out[1:-1]), bias=False,
            transposed=False, params=_numel([layer.depthwise_kernel]),
            trainable_params=_numel([layer.depthwise_kernel]) if layer.trainable else 0)
        pointwise_weights = [w for w in layer.weights if w is not layer.depthwise_kernel]
        pointwise = self.add(
            f"{name}/pointwise", Kind.CONV, [_Val(depthwise, mid_shape)], op=type(layer).__name__,
            in_channels=mid, out_channels=layer.filters, groups=1, kernel=(1,) * len(out[1:-1]),
            stride=(1,) * len(out[1:-1]), in_spatial=tuple(out[1:-1]),
            out_spatial=tuple(out[1:-1]), bias=bool(layer.use_bias),
            transposed=False, params=_numel(pointwise_weights),
            trainable_params=_numel(pointwise_weights) if layer.trainable else 0)
        return _Val(pointwise, out)


def _functional_graph(op: Any) -> Any | None:
    """The functional graph of a model (a Sequential keeps one in ``_functional``), else None."""
    graph = getattr(op, "_functional", None) or op
    return graph if hasattr(graph, "_nodes_by_depth") else None


def load_keras_model(model: Any, name: str | None = None) -> ChannelGraph:
    """Turn a built functional or sequential ``keras.Model`` into a ChannelGraph.

    Raises
    ------
    GraphError
        If the model is not built (subclassed models without a functional graph).
    """
    name = name or model.name
    model = _functional_graph(model)
    if model is None or not getattr(model, "inputs", None):
        raise GraphError(f"{name}: not a functional Keras model with known inputs; build it "
                         "with keras.Input or call it once on data")
    input_shape = _shape(model.inputs[0])[1:]
    if None in input_shape:
        raise GraphError(f"{name}: input shape {input_shape} has unknown sizes; build the "
                         "model with a fixed input shape (or pass --input-shape C,H,W)")
    graph = ChannelGraph(name, "keras", (input_shape[-1], *input_shape[:-1]))
    walker = _Walker(graph)
    inputs = []
    for tensor in model.inputs:
        layer = tensor._keras_history.operation
        shape = _shape(tensor)
        node = walker.add(layer.name, Kind.INPUT, [], op="InputLayer",
                          out_channels=shape[-1], out_spatial=tuple(shape[1:-1]),
                          shape=tuple(shape[1:]))
        inputs.append(_Val(node, shape))
    for index, out in enumerate(walker.walk(model, inputs, scope="")):
        node = walker.add("output" if index == 0 else f"output_{index}", Kind.OUTPUT, [out],
                          in_channels=out.shape[-1])
    graph.detached_params = _unwalked_params(model, walker.counted)
    return graph


def _unwalked_params(model: Any, counted: set[int]) -> dict[str, int]:
    """Weights of layers the inference graph never calls (kept in the parameter total)."""
    out = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) not in counted and not hasattr(layer, "_nodes_by_depth") and layer.weights:
            if not any(id(sub) in counted for sub in layer._flatten_layers(include_self=False)):
                out[layer.name] = int(layer.count_params())
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
        raise UnsupportedFileError(f"{path}: not a readable Keras model ({_first_line(text)})") from err
    except Exception as err:  # noqa: BLE001 - keras/h5py/zipfile raise many types on bad files
        raise UnsupportedFileError(f"{path}: not a readable Keras model "
                                   f"({type(err).__name__}: {_first_line(str(err))})") from err


def load_keras_file(path: str | Path) -> ChannelGraph:
    """Load a ``.keras`` or legacy ``.h5`` model file safely and import it."""
    return load_keras_model(load_keras_file_model(path), name=str(path))


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else "no details"
