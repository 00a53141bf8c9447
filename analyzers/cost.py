"""The cost model: one place, one rule per op kind (DESIGN section 4).

Every op's cost in every resource is bilinear in its alive input channels ``a_in`` and alive
output channels ``a_out``::

    cost = io * a_in * a_out + i * a_in + o * a_out + const

:data:`COST_RULES` maps each :class:`~morphscope.graph.Kind` to a rule giving those four
coefficients per resource from the node's attributes; :func:`compile_costs` evaluates the
rules once into numpy arrays, after which any widths cost one vectorized expression
(:func:`bilinear`), for numpy arrays and torch tensors alike.

Conventions (morph-net's ``resource_function.py``): a conv with kernel kh x kw, output
H x W and g groups costs ``kh*kw*H*W*(a_in/g)*a_out`` MACs; FLOPs = 2 x MACs; a depthwise conv
costs ``kh*kw*H*W*a_out``; bias, bn and activations are not in MACs. ``size`` counts conv and
linear kernel weights only (morph-net's model size). ``bytes_moved`` counts the float32
activations and weights every op that moves memory reads and writes (conv, linear, bn,
activations, add, mul, concat, pooling), as morph-net's ``memory_function`` does. What is
derived from these (FLOPs, the roofline latency) lives in :mod:`morphscope.analyzers.resources`;
morph-net's own conventions, where they differ, in :mod:`morphscope.analyzers.conventions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from morphscope.analyzers.hardware import BYTES_PER_ELEMENT, Hardware
from morphscope.analyzers.resources import BASES, RESOURCES, exact_total
from morphscope.errors import GraphError
from morphscope.graph import ChannelGraph, Kind, is_depthwise


@dataclass(frozen=True)
class Bilinear:
    """Coefficients of ``io*a_in*a_out + i*a_in + o*a_out + const`` for one op, one resource."""

    io: float = 0.0
    i: float = 0.0
    o: float = 0.0
    const: float = 0.0


ZERO = Bilinear()


@dataclass(frozen=True)
class OpCost:
    """An op's coefficients in each resource: MACs, parameters, morph-net size, bytes moved."""

    macs: Bilinear = ZERO
    params: Bilinear = ZERO
    size: Bilinear = ZERO
    bytes_moved: Bilinear = ZERO


CostRule = Callable[[Mapping[str, Any]], OpCost]


def bilinear(coeffs: Any, a_in: Any, a_out: Any) -> Any:
    """The one cost formula: ``coeffs[:, 0]*a_in*a_out + coeffs[:, 1]*a_in + coeffs[:, 2]*a_out
    + coeffs[:, 3]``, elementwise over ops.

    Parameters
    ----------
    coeffs : array of shape (n_ops, 4)
        ``(io, i, o, const)`` per op, as built by :func:`compile_costs`.
    a_in, a_out : arrays of shape (n_ops,) or (n_ops, k)
        Alive input and output channels per op (numpy arrays or torch tensors).

    Examples
    --------
    A layer with 2 inputs and 3 outputs and coefficient 1 costs 2*3 = 6:

    >>> float(bilinear(np.array([[1.0, 0, 0, 0]]), np.array([2.0]), np.array([3.0]))[0])
    6.0
    """
    if getattr(a_in, "ndim", 1) == 2:
        coeffs = coeffs[:, :, None]
    return coeffs[:, 0] * a_in * a_out + coeffs[:, 1] * a_in + coeffs[:, 2] * a_out + coeffs[:, 3]


# -- rules ------------------------------------------------------------------------------------

def _spatial(attrs: Mapping[str, Any], key: str) -> int:
    return math.prod(attrs.get(key) or ())


def _conv_cost(attrs: Mapping[str, Any]) -> OpCost:
    kernel = math.prod(attrs.get("kernel") or ())
    folded = attrs.get("batch", 1)  # a conv on a batch-folded tensor runs once per element
    out_hw = _spatial(attrs, "out_spatial") * folded
    in_hw = _spatial(attrs, "in_spatial") * folded
    groups = attrs.get("groups", 1)
    bias = 1.0 if attrs.get("bias") else 0.0
    # Pixels a kernel is applied at: the output's, or for a transposed conv the input's (each
    # input pixel scatters a kernel). Bytes always read the input map and write the output map.
    mac_hw = in_hw if attrs.get("transposed") else out_hw
    move = Bilinear(i=in_hw * BYTES_PER_ELEMENT, o=out_hw * BYTES_PER_ELEMENT)
    if is_depthwise(attrs):  # a_in/g == 1
        return OpCost(
            macs=Bilinear(o=kernel * mac_hw),
            params=_owned_params(Bilinear(o=kernel + bias), attrs),
            size=Bilinear(o=kernel),
            bytes_moved=Bilinear(i=move.i, o=move.o + (kernel + bias) * BYTES_PER_ELEMENT),
        )
    per_pair = kernel / groups
    return OpCost(
        macs=Bilinear(io=per_pair * mac_hw),
        params=_owned_params(Bilinear(io=per_pair, o=bias), attrs),
        size=Bilinear(io=per_pair),
        bytes_moved=Bilinear(io=per_pair * BYTES_PER_ELEMENT, i=move.i,
                             o=move.o + bias * BYTES_PER_ELEMENT),
    )


def _owned_params(from_shape: Bilinear, attrs: Mapping[str, Any]) -> Bilinear:
    """A conv/linear's params from its weight shape, corrected by the count it owns (the
    importers' ``params``): none when its weight is shared and counted at an earlier call or is
    a buffer; per-channel extras (a standardized conv's gain) scale with the output channels."""
    owned = attrs.get("params")
    if owned is None:
        return from_shape
    a_in, a_out = attrs.get("in_channels") or 0, attrs.get("out_channels") or 0
    seed = from_shape.io * a_in * a_out + from_shape.i * a_in + from_shape.o * a_out + from_shape.const
    extra = owned - seed
    if extra == 0:
        return from_shape
    if owned == 0:
        return ZERO
    if extra > 0 and a_out and extra % a_out == 0:
        return Bilinear(io=from_shape.io, i=from_shape.i, o=from_shape.o + extra / a_out,
                        const=from_shape.const)
    return Bilinear(const=owned)


def _linear_cost(attrs: Mapping[str, Any]) -> OpCost:
    rows = _spatial(attrs, "out_spatial")  # tokens or pixels the layer is applied to
    bias = 1.0 if attrs.get("bias") else 0.0
    return OpCost(
        macs=Bilinear(io=rows),
        params=_owned_params(Bilinear(io=1.0, o=bias), attrs),
        size=Bilinear(io=1.0),
        bytes_moved=Bilinear(io=BYTES_PER_ELEMENT, i=rows * BYTES_PER_ELEMENT,
                             o=(rows + bias) * BYTES_PER_ELEMENT),
    )


def _channel_params_cost(attrs: Mapping[str, Any]) -> OpCost:
    """Ops that compute nothing counted: any weights they own scale with their channels when
    they are per channel (bn: 2 in PyTorch, up to 4 in Keras; layer scale: 1), else fixed."""
    channels = attrs.get("out_channels") or 0
    params = attrs.get("params", 0)
    if channels and params % channels == 0:
        return OpCost(params=Bilinear(o=params / channels))
    return OpCost(params=Bilinear(const=params))


def _opaque_cost(attrs: Mapping[str, Any]) -> OpCost:
    """Pinned ops: fixed cost; matrix products between activations (attention) count MACs."""
    macs = sum(math.prod(m) for m in attrs.get("matmuls", ()))
    moved = sum(b * (m * k + k * n + m * n) for b, m, k, n in attrs.get("matmuls", ()))
    return OpCost(macs=Bilinear(const=macs), params=Bilinear(const=attrs.get("params", 0)),
                  bytes_moved=Bilinear(const=moved * BYTES_PER_ELEMENT))


def _memory_cost(attrs: Mapping[str, Any]) -> OpCost:
    """Ops that compute nothing counted but move memory (bn, activations, residual adds,
    gates, pooling): each input is read once (its pixels x its alive channels), the output
    written once; parameters as :func:`_channel_params_cost`. ``input_pixels`` (H*W of each
    input) is filled in by :func:`compile_costs`."""
    read = sum(attrs.get("input_pixels") or (_spatial(attrs, "in_spatial"),))
    return OpCost(params=_channel_params_cost(attrs).params,
                  bytes_moved=Bilinear(i=read * BYTES_PER_ELEMENT,
                                       o=_spatial(attrs, "out_spatial") * BYTES_PER_ELEMENT))


def _concat_cost(attrs: Mapping[str, Any]) -> OpCost:
    """A concat reads its inputs (together: the output's channels) and writes the output."""
    return OpCost(bytes_moved=Bilinear(o=2 * _spatial(attrs, "out_spatial") * BYTES_PER_ELEMENT))


MEMORY_KINDS = frozenset({Kind.BN, Kind.ACT, Kind.ADD, Kind.MUL, Kind.POOL, Kind.GLOBAL_POOL})
ZERO_COST_KINDS = frozenset({
    Kind.INPUT, Kind.SPLIT, Kind.FLATTEN, Kind.RESHAPE, Kind.PAD, Kind.RESIZE, Kind.IDENTITY,
    Kind.OUTPUT,
})

COST_RULES: Mapping[Kind, CostRule] = {
    Kind.CONV: _conv_cost,
    Kind.LINEAR: _linear_cost,
    Kind.CONCAT: _concat_cost,
    Kind.OPAQUE: _opaque_cost,
    **{kind: _memory_cost for kind in MEMORY_KINDS},
    **{kind: _channel_params_cost for kind in ZERO_COST_KINDS},
}


# -- compiled model ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CostModel:
    """A graph's cost rules evaluated once into arrays (one row per op, topological order).

    ``coeffs[resource]`` has shape (n_ops, 4); ``seed_in``/``seed_out`` are the ops' full
    input/output channel counts.
    """

    names: tuple[str, ...]
    kinds: tuple[Kind, ...]
    coeffs: dict[str, np.ndarray]
    seed_in: np.ndarray
    seed_out: np.ndarray
    detached_params: int = 0
    index: dict[str, int] = field(default_factory=dict)
    classes: tuple[str, ...] = ()  # per op, its latency class (:func:`latency_class`)


def latency_class(attrs: Mapping[str, Any]) -> str:
    """The op class a measured latency profile times separately: convs by shape (depthwise,
    grouped, 1x1 and others run different kernels), every other op by its kind.

    Examples
    --------
    >>> latency_class({"kind": Kind.CONV, "groups": 1, "kernel": (1, 1), "in_channels": 8})
    'conv_1x1'
    >>> latency_class({"kind": Kind.BN})
    'bn'
    """
    kind = attrs["kind"]
    if kind != Kind.CONV:
        return kind.value
    if is_depthwise(attrs):
        return "conv_depthwise"
    if (attrs.get("groups") or 1) > 1:
        return "conv_grouped"
    return "conv_1x1" if all(k == 1 for k in attrs.get("kernel") or (1,)) else "conv"


def compile_costs(graph: ChannelGraph, rules: Mapping[Kind, CostRule] | None = None) -> CostModel:
    """Evaluate each op's cost rule once.

    Parameters
    ----------
    graph : ChannelGraph
    rules : mapping of Kind to rule, optional
        Defaults to :data:`COST_RULES`; pass ``{**COST_RULES, **extra}`` to extend.

    Raises
    ------
    GraphError
        If an op's sizes make a count no real model has (beyond 2**62, or past float range),
        naming the op.
    """
    rules = COST_RULES if rules is None else rules
    names, kinds, rows, seed_in, seed_out, classes = [], [], {r: [] for r in BASES}, [], [], []
    for name, attrs in graph.ops():
        pixels = tuple(math.prod(graph[u].get("out_spatial") or ()) for u in graph.inputs_of(name))
        try:
            cost = rules[attrs["kind"]]({**attrs, "input_pixels": pixels})
        except OverflowError as err:
            raise _overflow(name, err) from err
        for base in BASES:
            c = getattr(cost, base)
            rows[base].append((c.io, c.i, c.o, c.const))
        seed_in.append((attrs.get("in_channels") or 0,))
        seed_out.append((attrs.get("out_channels") or 0,))
        names.append(name)
        kinds.append(attrs["kind"])
        classes.append(latency_class(attrs))
    model = CostModel(
        names=tuple(names),
        kinds=tuple(kinds),
        coeffs={r: _float_rows(rows[r], names).reshape(-1, 4) for r in BASES},
        seed_in=_float_rows(seed_in, names).reshape(-1),
        seed_out=_float_rows(seed_out, names).reshape(-1),
        detached_params=sum(graph.detached_params.values()),
        index={n: i for i, n in enumerate(names)},
        classes=tuple(classes),
    )
    seed = seed_costs(model)
    for base in BASES:  # refuse absurd sizes here, naming the op, not deep inside a total
        exact_total(seed[base], base, model.names)
    return model


def _float_rows(rows: list[tuple], names: list[str]) -> np.ndarray:
    """``rows`` as one float64 array; a number past float range is refused naming its op."""
    try:
        return np.array(rows, dtype=np.float64)
    except OverflowError:
        for name, row in zip(names, rows):
            try:
                [float(v) for v in row]
            except OverflowError as err:
                raise _overflow(name, err) from err
        raise


def _overflow(name: str, err: OverflowError) -> GraphError:
    return GraphError(f"{name}: its sizes overflow a cost ({err}); the graph's sizes are wrong")


def totals_of(model: CostModel, per_op: Mapping[str, np.ndarray], hardware: Hardware | None = None) -> dict[str, Any]:
    """Sum per-op base costs (rows) into whole-model totals, one key per resource of
    :data:`~morphscope.analyzers.resources.RESOURCES`: exact ints for one width vector, int
    arrays for (n_ops, k) columns; ``latency_s`` (roofline seconds) only given ``hardware``.

    Keys: ``macs`` (multiply-accumulates of conv, linear and matrix products, batch 1; bias,
    bn and activations excluded), ``flops`` (= 2 x macs), ``params`` (the framework's own
    rule, training-only weights included), ``size`` (conv/linear kernel weights, morph-net's
    model size), ``bytes_moved`` (float32 bytes the computing ops read and write),
    ``latency_s``.
    """
    return {r.key: r.total(model, per_op, hardware) for r in RESOURCES.values()
            if hardware is not None or r.count}


def per_op_costs(model: CostModel, a_in: Any, a_out: Any, bases: tuple[str, ...] = BASES) -> dict[str, Any]:
    """Base costs per op for the given alive widths (arrays aligned with ``model.names``)."""
    return {r: bilinear(model.coeffs[r], a_in, a_out) for r in bases}


def seed_costs(model: CostModel) -> dict[str, np.ndarray]:
    """Per-op base costs with every channel alive."""
    return per_op_costs(model, model.seed_in, model.seed_out)
