"""The framework-neutral half of the MorphNet regularizers: constants from the analyzers, and
the one evaluation both frameworks run on live tensors.

The regularizer of the paper (DESIGN section 7), for an op whose cost is bilinear,
``io*a_in*a_out + i*a_in + o*a_out``::

    G_op = io * (a_in * S_out + a_out * S_in) + i * S_in + o * S_out

where ``a`` are alive channel counts now (no gradient) and ``S`` the sums over channels of the
group score max |gamma| (differentiable). Depthwise convs (cost ``o*a``, input and output one
group) get ``o * (S_in + S_out)``. Coefficients, spaces, groups and quanta come from
:mod:`morphscope.analyzers` once, at construction (:func:`regularizer_plan`), as plain arrays;
:func:`evaluate` then computes the alive counts and G with the framework's own tensor ops
(gather, max, segment sum, where): no host sync, no numpy, no Python branch on a
tensor value, so the step compiles (``torch.compile(fullgraph=True)``, Keras ``jit_compile``)
and runs under data parallelism.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import sparse

from morphscope.analyzers.alive import alive_widths, gamma_masks
from morphscope.analyzers.cost import bilinear
from morphscope.analyzers.hardware import DEFAULT_HARDWARE, Hardware, get_hardware
from morphscope.analyzers.resources import get_resource
from morphscope.analyzers.widths import WidthModel
from morphscope.errors import MorphScopeError
from morphscope.graph import ChannelGraph, is_depthwise
from morphscope.regularizers.control import StrengthController, check_strength


class TensorOps(Protocol):
    """The few tensor operations :func:`evaluate` needs; each framework half supplies them."""

    def const(self, name: str) -> Any:
        """The plan's constant array ``name`` as a tensor (cached by the caller as it likes)."""

    def take(self, x: Any, index: Any) -> Any:
        """``x[index]`` along axis 0."""

    def amax(self, x: Any, axis: int) -> Any:
        """Max along ``axis`` (gradient to the max)."""

    def segment_sum(self, x: Any, ids: Any, n: int) -> Any:
        """``out[k] = sum(x[ids == k])`` for k < n."""

    def above(self, x: Any, threshold: float) -> Any:
        """``x > threshold`` as 0/1 numbers of ``x``'s dtype, with no gradient."""

    def concat(self, xs: list[Any]) -> Any:
        """Join 1-D tensors."""

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        """Elementwise choice."""



@dataclass(frozen=True)
class RegularizerPlan:
    """Constant arrays the framework halves evaluate on live tensors, built once.

    bn_names / bn_sizes : the regularized bn ops, in the order their |gamma| vectors are laid
        end to end into one flat vector, and each one's length.
    channel_index : (C, K) int, per regularized channel, the flat positions of its K group
        members' scales; padding points at one extra zero appended to the flat vector.
    channel_space / channel_qgroup : (C,) int, the space and the quantum group of each channel.
    qgroup_index : (n_spaces, Q) int, per space its quantum groups (padding: an extra zero).
    Everything else per space (``sizes``, ``quantum``, ``regularized``) or per op.
    """

    model: WidthModel
    target: str
    hardware: Hardware
    members: dict[int, list[tuple[str, int]]]
    bn_names: tuple[str, ...]
    bn_sizes: tuple[int, ...]
    n_qgroups: int
    n_ops: int
    n_branches: int
    arrays: dict[str, np.ndarray]

    @property
    def n_spaces(self) -> int:
        return self.model.spaces.n_spaces

    def alive_widths(self, gammas: dict[str, np.ndarray], threshold: float) -> np.ndarray:
        """Alive widths for ``gammas`` by the analyzers' own numpy rule (the reference)."""
        return alive_widths(gamma_masks(self.model.spaces, gammas, threshold))

    def cost(self, widths: np.ndarray) -> float:
        """The alive cost of the target resource (FLOPs, params, size or latency seconds)."""
        return float(self.model.target_cost(np.asarray(widths, dtype=np.float64), self.target,
                                            self.hardware))


def evaluate(plan: RegularizerPlan, flat_abs: Any, ops: TensorOps, threshold: float) -> tuple[Any, Any]:
    """``(G per op, alive widths per space)`` from the |gamma| of ``plan.bn_names`` laid end
    to end (one 1-D tensor); the caller sums G.

    The alive count of a space is the number of its channels whose group score (max |gamma|
    over the group's bn members) is strictly above ``threshold``; a space with a quantum q
    (grouped convs, group norms) counts q x its largest per-group count, as
    :func:`morphscope.analyzers.alive.alive_masks` does; unregularized and pinned spaces keep
    their full width. ``threshold`` must already be rounded for the tensor dtype
    (:func:`tensor_threshold`).
    """
    padded = ops.concat([flat_abs, ops.const("zero")])
    score = ops.amax(ops.take(padded, ops.const("channel_index")), axis=1)
    group_sums = ops.segment_sum(score, ops.const("channel_space"), plan.n_spaces)
    qcount = ops.segment_sum(ops.above(score, threshold), ops.const("channel_qgroup"), plan.n_qgroups)
    per_group = ops.amax(ops.take(ops.concat([qcount, ops.const("zero")]), ops.const("qgroup_index")), axis=1)
    regularized = ops.const("regularized")
    widths = regularized * ops.const("quantum") * per_group + (1 - regularized) * ops.const("sizes")
    a_in, a_out = _per_op(plan, ops, "in", widths), _per_op(plan, ops, "out", widths)
    s_in, s_out = _per_op(plan, ops, "in", group_sums), _per_op(plan, ops, "out", group_sums)
    coeff_out, coeff_in = _coefficients(plan, ops, a_in, a_out)
    per_op = bilinear(coeff_out, a_in, s_out) + bilinear(coeff_in, s_in, a_out)
    return per_op, widths


def _per_op(plan: RegularizerPlan, ops: TensorOps, side: str, per_space: Any) -> Any:
    """``m_side @ per_space`` (each op's input or output channels), from the sparse matrix's
    entries: a gather and a segment sum."""
    picked = ops.take(per_space, ops.const(f"{side}_cols")) * ops.const(f"{side}_vals")
    return ops.segment_sum(picked, ops.const(f"{side}_rows"), plan.n_ops)


def _coefficients(plan: RegularizerPlan, ops: TensorOps, a_in: Any, a_out: Any) -> tuple[Any, Any]:
    """``(coeff_out, coeff_in)``. A resource with several branches (the roofline: compute and
    memory) costs, per op, the max over its branches; G weighs the branch that binds at these
    widths (the first on a tie), chosen with a tensor ``where``."""
    coeff_out, coeff_in = ops.const("branch0_coeff_out"), ops.const("branch0_coeff_in")
    if plan.n_branches == 1:
        return coeff_out, coeff_in
    best = bilinear(ops.const("branch0_cost"), a_in, a_out)
    for k in range(1, plan.n_branches):
        value = bilinear(ops.const(f"branch{k}_cost"), a_in, a_out)
        better = value > best
        coeff_out = ops.where(better[:, None], ops.const(f"branch{k}_coeff_out"), coeff_out)
        coeff_in = ops.where(better[:, None], ops.const(f"branch{k}_coeff_in"), coeff_in)
        best = ops.where(better, value, best)
    return coeff_out, coeff_in


def tensor_threshold(threshold: float) -> float:
    """The threshold as the tensors compare it: ``float32(threshold)``, morph-net's rule
    (``|gamma| > t`` between float32 values; the analyzers compare the same way). A float64
    model's scores compare against the same value."""
    return float(np.float32(threshold))


def _bilinear_split(io_i_o: np.ndarray, depthwise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``(io, i, o)`` of a cost -> the ``(coeff_out, coeff_in)`` pair of G."""
    io, i, o = io_i_o[:, 0], io_i_o[:, 1], io_i_o[:, 2]
    zero = np.zeros_like(io)
    i_eff = np.where(depthwise, o, i)  # depthwise: o * (S_in + S_out)
    return np.stack([io, zero, o, zero], axis=1), np.stack([io, i_eff, zero, zero], axis=1)


def regularizer_plan(graph: ChannelGraph, model: WidthModel, target: str,
                     hardware: str | Hardware = DEFAULT_HARDWARE,
                     cover: dict[int, list[tuple[str, int]]] | None = None) -> RegularizerPlan:
    """Which bn scales regularize which space, and every constant array of :func:`evaluate`.

    ``cover`` (per space, ``(op, offset)`` of the ops whose per-channel scores regularize it)
    defaults to the bn scales, ``spaces.bn_cover``; the group-lasso family passes the source
    ops writing each space (:func:`morphscope.analyzers.group_lasso.writer_cover`).

    Raises
    ------
    MorphScopeError
        If no unpinned space has a norm scale (nothing to regularize).
    """
    hw = hardware if isinstance(hardware, Hardware) else get_hardware(hardware)
    spaces = model.spaces
    cover = spaces.bn_cover if cover is None else cover
    members = {s: ops for s, ops in cover.items() if not spaces.pinned[s]}
    if not members:
        raise MorphScopeError(f"{graph.name}: nothing to regularize: no trainable norm scale "
                              "(gamma) on a prunable channel space (FrozenBatchNorm, Identity or "
                              "scale-free norms only, or every normed space pinned)")
    bn_names = tuple(dict.fromkeys(bn for cover in members.values() for bn, _ in cover))
    bn_sizes = tuple(int(graph[bn]["out_channels"]) for bn in bn_names)
    start = dict(zip(bn_names, np.concatenate([[0], np.cumsum(bn_sizes)[:-1]]).astype(int)))
    pad = int(sum(bn_sizes))  # position of the appended zero
    width = max(len(cover) for cover in members.values())
    q_width = int(spaces.quantum.max())
    rows, channel_space, channel_qgroup, n_qgroups = [], [], [], 0
    qgroup_index = np.full((spaces.n_spaces, q_width), -1, dtype=np.int64)
    for space, cover in sorted(members.items()):
        size, q = int(spaces.sizes[space]), int(spaces.quantum[space])
        index = np.full((size, width), pad, dtype=np.int64)
        for k, (bn, offset) in enumerate(cover):
            index[:, k] = start[bn] + offset + np.arange(size)
        rows.append(index)
        channel_space.append(np.full(size, space, dtype=np.int64))
        channel_qgroup.append(n_qgroups + np.arange(size) // (size // q))
        qgroup_index[space, :q] = n_qgroups + np.arange(q)
        n_qgroups += q
    qgroup_index[qgroup_index < 0] = n_qgroups  # padding: the appended zero
    regularized = np.zeros(spaces.n_spaces)
    regularized[list(members)] = 1.0
    depthwise = np.array([is_depthwise(graph[n]) for n in model.costs.names], dtype=bool)
    branches = get_resource(target).coefficients(model.costs, hw)
    m_in, m_out = (sparse.coo_array(m) for m in (model.m_in, model.m_out))
    arrays = {"channel_index": np.concatenate(rows), "channel_space": np.concatenate(channel_space),
              "channel_qgroup": np.concatenate(channel_qgroup).astype(np.int64),
              "qgroup_index": qgroup_index, "zero": np.zeros(1), "regularized": regularized,
              "quantum": spaces.quantum.astype(np.float64), "sizes": model.seed_widths,
              **{f"{side}_{part}": np.asarray(getattr(m, attr), dtype=dtype)
                 for side, m in (("in", m_in), ("out", m_out))
                 for part, attr, dtype in (("rows", "row", np.int64), ("cols", "col", np.int64),
                                           ("vals", "data", np.float64))}}
    for k, coeffs in enumerate(branches):
        arrays[f"branch{k}_cost"] = coeffs
        arrays[f"branch{k}_coeff_out"], arrays[f"branch{k}_coeff_in"] = _bilinear_split(coeffs, depthwise)
    return RegularizerPlan(model, target, hw, members, bn_names, bn_sizes, n_qgroups,
                           len(model.costs.names), len(branches), arrays)


def cost_record(regularizer: Any, step: int, widths: np.ndarray, loss: float | None,
                metrics: Any) -> dict[str, Any]:
    """One ``cost.jsonl`` line: step, target (the resource), alive cost, loss, the strength
    and the budget where the regularizer has them, and the user's metrics."""
    extra = metrics() if callable(metrics) else (metrics or {})
    record = {"step": step, "target": regularizer.plan.target, "cost": regularizer.plan.cost(widths),
              "loss": None if loss is None else float(loss)}
    if regularizer.strength is not None:
        record["strength"] = regularizer.strength
    if regularizer.controller is not None:
        record["budget"] = regularizer.controller.budget
    return {**record, **{k: float(v) for k, v in extra.items()}}


class StructureLogger:
    """Every ``every`` steps, writes ``<out>/alive_<step>`` (morph-net's widths JSON) and
    appends ``{"step", "target", "cost", "loss", "strength", "budget", **metrics}`` to
    ``<out>/cost.jsonl``, so the explorer can plot cost against step and the cost against a
    user metric; at every step it also lets a regularizer with a target adapt its strength.

    Call it once per training step, on every rank: ``logger.step(step, loss=float(loss))``.
    Which process writes is decided at each write (:meth:`writes`), not when the logger is
    built: Lightning and the Hugging Face Trainer build callbacks before the process group
    exists. The alive counts are computed on every rank (gathering FSDP2 gammas is collective).
    """

    def __init__(self, regularizer: Any, out_dir: str | Path, every: int = 100) -> None:
        self.regularizer = regularizer
        self.out = Path(out_dir)
        self.every = every

    def writes(self) -> bool:
        """Whether this process writes the files (the torch logger: rank 0 only)."""
        return True

    def step(self, step: int, loss: float | None = None, metrics: Any = None) -> None:
        """Adapt the strength (with a target) and log ``step`` if it is a multiple of
        ``every``. ``metrics``: user numbers to record beside the cost (e.g.
        ``{"val_accuracy": 0.93}``), or a callable returning them, called only on logged
        steps of the writing process."""
        self.regularizer.adapt(step)
        if step % self.every:
            return
        widths = self.regularizer.alive_widths()
        if not self.writes():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"alive_{step}").write_text(self.regularizer.widths_json(widths) + "\n")
        with open(self.out / "cost.jsonl", "a") as f:
            f.write(json.dumps(cost_record(self.regularizer, step, widths, loss, metrics)) + "\n")


class Strength:
    """The strength half both frameworks' regularizers share: a fixed ``strength``, or one
    steered to ``target`` / ``budget`` by a :class:`~morphscope.regularizers.control.StrengthController`.
    The value is a Python float here; each framework also keeps it in a tensor or variable
    (``_store_strength``, ``_assign_strength``) that a compiled step reads without being
    traced again."""

    controller: StrengthController | None = None
    strength: float | None = None  # None where neither strength= nor target= was given
    _strength: Any = None

    def _init_strength(self, strength: float | None, target: float | None, budget: float | None,
                       adapt_every: int) -> None:
        if target is not None or budget is not None:
            seed_cost = self.plan.cost(self.plan.model.seed_widths)
            self.controller = StrengthController.for_target(seed_cost, self.loss_value(), target, budget,
                                                            strength, adapt_every)
            strength = self.controller.strength
        self.strength = None if strength is None else check_strength(strength)
        self._strength = None if strength is None else self._store_strength(self.strength)

    def require_strength(self) -> None:
        """Refuse, in one line, a regularizer built without ``strength=``, ``target=`` or ``budget=``.

        Raises
        ------
        MorphScopeError
            If it has no strength.
        """
        if self._strength is None:  # the stored tensor, not the float: a compiled step guards on what it reads
            raise MorphScopeError(f"{type(self).__name__}: no strength: pass strength= (e.g. 1e-9) "
                                  "or target= (a fraction of the seed's cost) when building it")

    def penalty(self) -> Any:
        """``strength * loss()``: the term to add to the task loss (see :meth:`require_strength`)."""
        self.require_strength()
        return self._strength * self.loss()

    def adapt(self, step: int) -> float | None:
        """With a target, every ``adapt_every`` steps: move the strength for the alive cost
        now (call it once per step, on every rank; the callbacks do). The strength."""
        if self.controller is not None and self.controller.due(step):
            self.strength = self.controller.update(self.cost(), step)
            self._assign_strength(self.strength)
        return self.strength


def learned_structure(regularizer: Any) -> Any:
    """A regularizer's structure now, as a checkpoint of its model would give it: the bn
    scales by bn op name, or (group lasso, whose scores are kernel norms) the alive counts
    per source op."""
    from morphscope.importers.checkpoints import LearnedStructure

    source = f"{type(regularizer).__name__} (now)"
    if regularizer._cover() is None:
        return LearnedStructure(source, gammas=regularizer.gammas())
    return LearnedStructure(source, alive_counts=json.loads(regularizer.widths_json()))
