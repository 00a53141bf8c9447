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
linear kernel weights only (morph-net's model size). Latency is a roofline per op,
``max(flops / peak, bytes_moved / bandwidth)``, over ops that compute (conv, linear, matmul).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from morphscope.analyzers.hardware import BYTES_PER_ELEMENT, Hardware
from morphscope.graph import ChannelGraph, Kind

RESOURCES = ("macs", "params", "size", "bytes_moved")


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
    out_hw = _spatial(attrs, "out_spatial")
    in_hw = _spatial(attrs, "in_spatial")
    groups = attrs.get("groups", 1)
    bias = 1.0 if attrs.get("bias") else 0.0
    if attrs.get("transposed"):  # each input pixel scatters a kernel: MACs scale with input size
        out_hw, in_hw = in_hw, out_hw
    move = Bilinear(i=in_hw * BYTES_PER_ELEMENT, o=out_hw * BYTES_PER_ELEMENT)
    if groups > 1 and groups == attrs.get("in_channels"):  # depthwise: a_in/g == 1
        return OpCost(
            macs=Bilinear(o=kernel * out_hw),
            params=Bilinear(o=kernel + bias),
            size=Bilinear(o=kernel),
            bytes_moved=Bilinear(i=move.i, o=move.o + (kernel + bias) * BYTES_PER_ELEMENT),
        )
    per_pair = kernel / groups
    return OpCost(
        macs=Bilinear(io=per_pair * out_hw),
        params=Bilinear(io=per_pair, o=bias),
        size=Bilinear(io=per_pair),
        bytes_moved=Bilinear(io=per_pair * BYTES_PER_ELEMENT, i=move.i,
                             o=move.o + bias * BYTES_PER_ELEMENT),
    )


def _linear_cost(attrs: Mapping[str, Any]) -> OpCost:
    rows = _spatial(attrs, "out_spatial")  # tokens or pixels the layer is applied to
    bias = 1.0 if attrs.get("bias") else 0.0
    return OpCost(
        macs=Bilinear(io=rows),
        params=Bilinear(io=1.0, o=bias),
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


ZERO_COST_KINDS = frozenset({
    Kind.INPUT, Kind.ADD, Kind.MUL, Kind.CONCAT, Kind.SPLIT, Kind.ACT, Kind.POOL,
    Kind.GLOBAL_POOL, Kind.FLATTEN, Kind.RESHAPE, Kind.PAD, Kind.RESIZE, Kind.IDENTITY,
    Kind.OUTPUT,
})

COST_RULES: Mapping[Kind, CostRule] = {
    Kind.CONV: _conv_cost,
    Kind.LINEAR: _linear_cost,
    Kind.BN: _channel_params_cost,
    Kind.OPAQUE: _opaque_cost,
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


def compile_costs(graph: ChannelGraph, rules: Mapping[Kind, CostRule] | None = None) -> CostModel:
    """Evaluate each op's cost rule once.

    Parameters
    ----------
    graph : ChannelGraph
    rules : mapping of Kind to rule, optional
        Defaults to :data:`COST_RULES`; pass ``{**COST_RULES, **extra}`` to extend.
    """
    rules = COST_RULES if rules is None else rules
    names, kinds, rows, seed_in, seed_out = [], [], {r: [] for r in RESOURCES}, [], []
    for name, attrs in graph.ops():
        cost = rules[attrs["kind"]](attrs)
        names.append(name)
        kinds.append(attrs["kind"])
        for resource in RESOURCES:
            c = getattr(cost, resource)
            rows[resource].append((c.io, c.i, c.o, c.const))
        seed_in.append(attrs.get("in_channels") or 0)
        seed_out.append(attrs.get("out_channels") or 0)
    return CostModel(
        names=tuple(names),
        kinds=tuple(kinds),
        coeffs={r: np.array(rows[r], dtype=np.float64).reshape(-1, 4) for r in RESOURCES},
        seed_in=np.array(seed_in, dtype=np.float64),
        seed_out=np.array(seed_out, dtype=np.float64),
        detached_params=sum(graph.detached_params.values()),
        index={n: i for i, n in enumerate(names)},
    )


def roofline_latency_s(per_op_macs: np.ndarray, per_op_bytes: np.ndarray, hw: Hardware) -> Any:
    """``sum(max(2*macs / peak, bytes / bandwidth))`` in seconds over ops that compute
    (rows); a float for one width vector, an array for (n_ops, k) columns."""
    compute_s = 2.0 * per_op_macs / (hw.peak_gflop_per_s * 1e9)
    memory_s = per_op_bytes / (hw.memory_gb_per_s * 1e9)
    latency = np.where(per_op_macs > 0, np.maximum(compute_s, memory_s), 0.0).sum(axis=0)
    return float(latency) if np.ndim(latency) == 0 else latency


def totals_of(model: CostModel, per_op: Mapping[str, np.ndarray], hardware: Hardware | None = None) -> dict[str, Any]:
    """Sum per-op costs (rows) into whole-model totals: ints for one width vector, int arrays
    for (n_ops, k) columns.

    Keys: ``macs`` (multiply-accumulates of conv, linear and matrix products, batch 1; bias,
    bn and activations excluded), ``flops`` (= 2 x macs), ``params`` (the framework's own
    rule, training-only weights included), ``size`` (conv/linear kernel weights, morph-net's
    model size), ``bytes_moved`` (float32 bytes the computing ops read and write) and, given
    ``hardware``, ``latency_s`` (roofline seconds).
    """
    def total(values: np.ndarray) -> Any:
        summed = np.rint(np.sum(values, axis=0)).astype(np.int64)
        return int(summed) if np.ndim(summed) == 0 else summed

    out = {"macs": total(per_op["macs"])}
    out["flops"] = 2 * out["macs"]
    out["params"] = total(per_op["params"]) + model.detached_params
    out["size"] = total(per_op["size"])
    out["bytes_moved"] = total(per_op["bytes_moved"])
    if hardware is not None:
        out["latency_s"] = roofline_latency_s(per_op["macs"], per_op["bytes_moved"], hardware)
    return out


def per_op_costs(model: CostModel, a_in: Any, a_out: Any) -> dict[str, Any]:
    """Each resource per op for the given alive widths (arrays aligned with ``model.names``)."""
    return {r: bilinear(model.coeffs[r], a_in, a_out) for r in RESOURCES}


def seed_costs(model: CostModel) -> dict[str, np.ndarray]:
    """Per-op costs with every channel alive."""
    return per_op_costs(model, model.seed_in, model.seed_out)
