"""The resource registry: every resource MorphScope counts, each written once (DESIGN section 4).

The cost rules (:mod:`morphscope.analyzers.cost`) give four *base* quantities per op, each
bilinear in its alive channels: ``macs``, ``params``, ``size`` and ``bytes_moved``. Every
resource a user can ask for (a report column, a solver target, a regularizer target) is a
:class:`Resource` in :data:`RESOURCES`, derived from those bases in one place:

- ``flops`` = 2 x ``macs`` (:data:`FLOPS_PER_MAC`, a multiply and an add), written only here;
- ``latency`` = the roofline ``max(flops / peak, bytes_moved / bandwidth)`` per computing op,
  summed: a resource with two :class:`Branch` es, written only here.

The same :class:`Resource` gives totals (:meth:`Resource.total`) and the bilinear coefficients
the regularizers weigh (:meth:`Resource.coefficients`).

Totals of counts are exact Python ints (float64 per op, rounded, summed without wrapping);
an op whose count is beyond :data:`MAX_COUNT` is refused with a one-line error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from morphscope.analyzers.hardware import HARDWARE, Hardware
from morphscope.errors import GraphError, MorphScopeError

BASES = ("macs", "params", "size", "bytes_moved")  # the fields of every cost rule
MAX_COUNT = 2 ** 62  # no real model comes near; a total beyond it is refused, never wrapped
MAX_OP_COUNT = 2 ** 53  # per-op counts are float64 products: exact integers up to here only

PerOp = Mapping[str, np.ndarray]  # base name -> per-op values (n_ops,) or (n_ops, k)
FLOPS_PER_MAC = 2  # a multiply and an add


@dataclass(frozen=True)
class Branch:
    """``factor * base``, in seconds when multiplied by a hardware's seconds per unit of ``rate``."""

    base: str
    factor: float = 1.0
    rate: str | None = None  # a Hardware field: peak_gflop_per_s, memory_gb_per_s

    def scale(self, hardware: Hardware | None, classes: tuple[str, ...] = ()) -> Any:
        """The number multiplying the base quantity: a scalar, or one per op (a measured
        profile times each op class on its own; ``classes`` are the ops' latency classes)."""
        if self.rate is None:
            return self.factor
        if hardware is None:
            raise MorphScopeError(f"{self.rate} needs a hardware; choose from {sorted(HARDWARE)}")
        return self.factor * hardware.seconds_per(self.rate, classes)


def _rows(scale: Any, values: np.ndarray) -> Any:
    """A per-op scale shaped to multiply ``values`` row by row ((n_ops,) or (n_ops, k))."""
    return scale.reshape((-1,) + (1,) * (np.ndim(values) - 1)) if np.ndim(scale) else scale


@dataclass(frozen=True)
class Resource:
    """One resource: per op, the largest of its branches (one for a count; compute and
    memory for the roofline), or their sum plus a fixed overhead per op on a measured
    profile (:class:`~morphscope.analyzers.hardware.Hardware` with ``classes``).

    name : what users pass (``--resource``, a regularizer's target).
    key : its key in totals dicts, with the unit (``latency_s``).
    branches : per op, the resource is ``max`` (profile: sum) over these of ``scale * base``.
    model_constant : a :class:`~morphscope.analyzers.cost.CostModel` field added to the total
        (parameters no op owns), or ``None``.
    """

    name: str
    key: str
    description: str
    branches: tuple[Branch, ...]
    model_constant: str | None = None

    @property
    def count(self) -> bool:
        """An integer count (summed exactly), not seconds."""
        return all(b.rate is None for b in self.branches)

    @property
    def bases(self) -> tuple[str, ...]:
        """The base quantities it is computed from."""
        return tuple(dict.fromkeys(b.base for b in self.branches))

    def per_op(self, per_op: PerOp, hardware: Hardware | None = None, classes: tuple[str, ...] = ()) -> np.ndarray:
        """Per-op values from per-op base values (``classes``: the ops' latency classes)."""
        scaled = [_rows(b.scale(hardware, classes), per_op[b.base]) * per_op[b.base] for b in self.branches]
        if len(scaled) == 1:
            return scaled[0]
        if hardware is None or not hardware.is_profile:
            return np.maximum.reduce(scaled)
        total = np.add.reduce(scaled)  # measured: compute and memory time add, plus the call
        return total + _rows(hardware.overhead_s(classes), total) * (total > 0)

    def coefficients(self, costs: Any, hardware: Hardware | None = None) -> tuple[np.ndarray, ...]:
        """One (n_ops, 4) bilinear coefficient array per branch of a
        :class:`~morphscope.analyzers.cost.CostModel`: the op's resource is the max over
        branches of :func:`~morphscope.analyzers.cost.bilinear` of them (one summed array on a
        measured profile; its per-call overhead is a constant, no coefficient)."""
        arrays = tuple(_rows(b.scale(hardware, costs.classes), costs.coeffs[b.base]) * costs.coeffs[b.base]
                       for b in self.branches)
        if len(arrays) > 1 and hardware is not None and hardware.is_profile:
            return (np.add.reduce(arrays),)
        return arrays

    def total(self, model: Any, per_op: PerOp, hardware: Hardware | None = None) -> Any:
        """Whole-model total of per-op base values ``per_op`` (rows aligned with
        ``model.names``): an int (a float for seconds) for one width vector, an array for
        (n_ops, k) columns."""
        values = self.per_op(per_op, hardware, model.classes)
        if not self.count:
            summed = np.sum(values, axis=0)
            return float(summed) if np.ndim(summed) == 0 else summed
        constant = getattr(model, self.model_constant) if self.model_constant else 0
        return exact_total(values, self.name, model.names, constant)


RESOURCES: Mapping[str, Resource] = {r.name: r for r in (
    Resource("macs", "macs", "multiply-accumulates of conv, linear and matrix products, batch 1; "
             "bias, bn and activations excluded", (Branch("macs"),)),
    Resource("flops", "flops", "floating point operations: 2 x MACs (a multiply and an add)",
             (Branch("macs", FLOPS_PER_MAC),)),
    Resource("params", "params", "parameters, by the framework's own rule (Keras counts bn moving "
             "statistics), training-only weights included", (Branch("params"),),
             model_constant="detached_params"),
    Resource("size", "size", "conv and linear kernel weights (morph-net's model size)", (Branch("size"),)),
    Resource("bytes_moved", "bytes_moved", "float32 bytes the ops read and write (conv, linear, "
             "bn, activations, add, mul, concat, pooling)", (Branch("bytes_moved"),)),
    # The roofline: per op, max(flops / peak compute, bytes / memory bandwidth); ops that only
    # move memory (bn, activations, adds, concats) cost their memory time, as in morph-net. On a
    # measured profile: per op class, the fitted compute and memory times added, plus its overhead.
    Resource("latency", "latency_s", "seconds per inference: the roofline of a named hardware, or "
             "a latency profile measured on a machine (morphscope profile)",
             (Branch("macs", FLOPS_PER_MAC, "peak_gflop_per_s"), Branch("bytes_moved", 1.0, "memory_gb_per_s"))),
)}
RESOURCE_NAMES = tuple(RESOURCES)  # e.g. the CLI's --resource choices


def get_resource(name: str) -> Resource:
    """The :class:`Resource` called ``name``.

    Raises
    ------
    MorphScopeError
        If ``name`` is not in :data:`RESOURCES`.

    Examples
    --------
    >>> get_resource("latency").key
    'latency_s'
    """
    try:
        return RESOURCES[name]
    except (KeyError, TypeError):
        raise MorphScopeError(f"unknown resource {name!r}; choose from {', '.join(RESOURCES)}") from None


def exact_total(values: np.ndarray, resource: str, names: tuple[str, ...], constant: int = 0) -> Any:
    """Sum per-op counts (rows) exactly: a Python int for (n_ops,), an int64 array for
    (n_ops, k) columns (every column checked to fit).

    Raises
    ------
    GraphError
        If an op's count is not finite or beyond :data:`MAX_OP_COUNT` (float64 stops
        holding every integer there), or the total is beyond :data:`MAX_COUNT`: the op
        with the largest count is named.

    Examples
    --------
    >>> exact_total(np.array([2.0 ** 52, 2.0 ** 52, 3.0]), "macs", ("a", "b", "c"))
    9007199254740995
    """
    rounded = np.rint(np.asarray(values, dtype=np.float64))
    magnitude = np.abs(rounded) if rounded.size else np.zeros((1,) + rounded.shape[1:])
    if not np.isfinite(rounded).all() or magnitude.max() > MAX_OP_COUNT:
        _refuse(rounded, resource, names, "2**53 for one op")
    ints = rounded.astype(np.int64)
    if rounded.shape[0] * float(magnitude.max()) < 2.0 ** 63:  # an int64 sum cannot wrap
        summed = ints.sum(axis=0)
        largest = float(np.abs(summed).max(initial=0))
    else:  # Python ints: exact at any size
        summed = ints.sum(axis=0, dtype=object)
        largest = max(abs(int(t)) for t in np.atleast_1d(summed))
    if largest + abs(constant) > MAX_COUNT:
        _refuse(rounded, resource, names, "2**62 in total")
    if np.ndim(summed) == 0:
        return int(summed) + constant
    return np.asarray(summed, dtype=np.int64) + constant


def _refuse(values: np.ndarray, resource: str, names: tuple[str, ...], limit: str) -> None:
    scale = np.nan_to_num(np.abs(values), nan=np.inf).reshape(len(values), -1).max(axis=1)
    row = int(np.argmax(scale))
    raise GraphError(f"{names[row]}: {resource} of {scale[row]:.3g} takes the count beyond "
                     f"{limit} (no real model comes near); the graph's sizes are wrong")
