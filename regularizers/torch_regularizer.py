"""MorphNet regularizers for PyTorch models (torch imported lazily, on construction).

    reg = FlopsRegularizer(model, example_input=torch.zeros(1, 3, 224, 224))
    loss = task_loss + strength * reg.loss()     # strength: e.g. 1e-9 for FLOPs
    reg.cost()                                   # alive FLOPs now, as the analyzers count them

The bn modules are found by the graph's op names (module paths of the unwrapped model);
``loss()`` reads their live ``weight`` parameters at every call, so gradients flow to the
gammas, and wrapping the model afterwards (DDP, ``torch.compile``, FSDP2 ``fully_shard``)
changes nothing. ``loss()`` is pure tensor code (see :func:`morphscope.regularizers.core.evaluate`):
no host sync, so ``torch.compile(fullgraph=True)`` takes a step that includes it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from morphscope.analyzers.alive import DEFAULT_THRESHOLD
from morphscope.analyzers.conventions import DEFAULT_CONVENTION, Scope
from morphscope.analyzers.widths import compile_width_model
from morphscope.errors import MorphScopeError
from morphscope.exporters.writers import widths_json
from morphscope.graph import ChannelGraph
from morphscope.regularizers import core
from morphscope.regularizers.control import DEFAULT_ADAPT_EVERY
from morphscope.regularizers.core import Strength, evaluate, learned_structure, regularizer_plan, tensor_threshold


def unwrap_model(model: Any) -> Any:
    """The user's own module inside DDP/DataParallel (``module.``) and ``torch.compile``
    (``_orig_mod.``) wrappers, so op names never carry their prefixes.

    Raises
    ------
    MorphScopeError
        If the model uses FSDP1 (``FullyShardedDataParallel``): it flattens the bn scales into
        sharded flat parameters, so a rank does not hold its gammas; use FSDP2 ``fully_shard``.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    while True:
        if getattr(model, "_orig_mod", None) is not None:
            model = model._orig_mod
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            model = model.module
        else:
            break
    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise MorphScopeError(f"{type(model).__name__}: FSDP1 (FullyShardedDataParallel) is not "
                              "supported: it flattens the bn scales into sharded flat parameters; "
                              "shard with FSDP2 torch.distributed.fsdp.fully_shard instead")
    return model


def _is_rank_zero() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class _TorchOps:
    """:class:`~morphscope.regularizers.core.TensorOps` on torch, constants cached per device and dtype."""

    def __init__(self, plan: Any, device: Any, dtype: Any) -> None:
        import torch

        self.device, self.dtype = device, dtype
        self.consts = {name: torch.as_tensor(a, device=device,
                                             dtype=torch.int64 if a.dtype.kind == "i" else dtype)
                       for name, a in plan.arrays.items()}

    def const(self, name):
        return self.consts[name]

    def take(self, x, index):
        return x[index]

    def amax(self, x, axis):
        return x.amax(dim=axis)

    def segment_sum(self, x, ids, n):
        import torch

        return torch.zeros(n, device=x.device, dtype=x.dtype).index_add(0, ids, x)

    def above(self, x, threshold):
        return (x.detach() > threshold).to(x.dtype)

    def concat(self, xs):
        import torch

        return torch.cat(xs)

    def where(self, cond, a, b):
        import torch

        return torch.where(cond, a, b)


class GammaRegularizer(Strength):
    """Resource-weighted group-L1 on bn scales, for one target resource.

    Parameters
    ----------
    model : torch.nn.Module
        The model, plain or wrapped (DDP, ``torch.compile``); sharded by FSDP2
        ``fully_shard`` only with ``graph`` given (else build it before sharding).
    example_input : torch.Tensor, optional
        One batch-1 input to capture the graph with; or pass ``graph``.
    graph : ChannelGraph, optional
        An already imported graph of ``model``.
    threshold : float
        Alive means group max |gamma| > threshold (the analyzers' rule).
    hardware : str or Hardware
        The latency model for ``latency``: a named roofline or a measured profile
        (``morphscope profile``'s JSON file).
    resource : str, optional
        ``flops``, ``size``, ``params`` or ``latency`` (default: the class's).
    convention : str
        ``physical`` or ``morph-net`` (:mod:`morphscope.analyzers.conventions`).
    scope : Scope, optional
        Which outputs may be pruned and which part is regularized (default: every output
        kept, the whole network).
    strength : float, optional
        The weight of :meth:`penalty` (``strength * loss()``); with a target, the first one.
    target, budget : float, optional
        Steer the strength during training so that the alive cost reaches ``target`` x the
        seed's cost (``target`` in (0, 1]) or ``budget`` (absolute, in the resource's unit):
        see :mod:`morphscope.regularizers.control`; call :meth:`adapt` each step (the
        loggers and callbacks do).
    adapt_every : int
        Steps between strength updates.

    Raises
    ------
    MorphScopeError
        If nothing is regularizable (no norm scale on a prunable space), for FSDP1, or for
        an FSDP2-sharded model without ``graph``.

    Notes
    -----
    ``loss()`` is computed in float32 (float64 for a float64 model) whatever the model's
    dtype or autocast: a FLOP regularizer is ~1e10, beyond float16. FSDP2 shards each gamma
    along its channels; the loss gathers the full vectors (``DTensor.full_tensor()``, one
    small all-gather per bn) rather than reducing from local shards, because the group max
    ties channels of different bn layers that FSDP shards independently; every rank then
    computes the same G, equal to the single-process value.
    """

    target = "flops"

    def __init__(self, model: Any, example_input: Any = None, graph: ChannelGraph | None = None,
                 threshold: float = DEFAULT_THRESHOLD, hardware: str = "V100",
                 resource: str | None = None, convention: str = DEFAULT_CONVENTION,
                 scope: Scope | None = None, *, strength: float | None = None,
                 target: float | None = None, budget: float | None = None,
                 adapt_every: int = DEFAULT_ADAPT_EVERY) -> None:
        from torch.distributed.fsdp import FSDPModule

        from morphscope.importers.torch_importer import load_module

        inner = unwrap_model(model)
        if graph is None:
            if example_input is None:
                raise MorphScopeError(f"{type(inner).__name__}: pass example_input (one batch-1 "
                                      "input) or graph")
            if any(isinstance(m, FSDPModule) for m in inner.modules()):
                raise MorphScopeError(f"{type(inner).__name__}: already sharded by fully_shard, so "
                                      "it cannot be captured; build the regularizer before "
                                      "fully_shard, or pass graph= (captured from the unsharded model)")
            was_training = inner.training
            graph = load_module(inner, tuple(example_input.shape[1:]), name=type(inner).__name__)
            inner.train(was_training)
        self.graph = graph
        self.threshold = threshold
        self.width_model = compile_width_model(graph, convention, scope)
        self.plan = regularizer_plan(graph, self.width_model, resource or self.target, hardware,
                                     self._cover())
        self.bn_modules = {name: inner.get_submodule(name) for name in self.plan.bn_names}
        frozen = [n for n, m in self.bn_modules.items() if not m.weight.requires_grad]
        if frozen:
            warnings.warn(f"{type(inner).__name__}: {len(frozen)} bn scales are frozen "
                          f"(requires_grad=False), the regularizer cannot move them: {', '.join(frozen)}",
                          stacklevel=2)
        self._ops: _TorchOps | None = None
        self.alive_widths()  # constants on the gammas' device now, not inside a compiled step
        self._init_strength(strength, target, budget, adapt_every)

    def _store_strength(self, value: float) -> Any:
        """A 0-d float64 CPU tensor: it multiplies a loss on any device (as a Python number
        would) and is updated in place, so a compiled step is not traced again."""
        import torch

        return torch.tensor(value, dtype=torch.float64)

    def _assign_strength(self, value: float) -> None:
        self._strength.fill_(value)

    def _cover(self) -> dict[int, list[tuple[str, int]]] | None:
        """The ops whose scores regularize each space: None, the bn scales (the group-lasso
        family overrides it)."""
        return None

    def _full_scales(self) -> list[Any]:
        """Each regularized bn's whole gamma vector (FSDP2 DTensors gathered)."""
        from torch.distributed.tensor import DTensor

        scales = []
        for (name, module), size in zip(self.bn_modules.items(), self.plan.bn_sizes):
            weight = module.weight
            if isinstance(weight, DTensor):
                weight = weight.full_tensor()
            if weight.shape != (size,):
                raise MorphScopeError(f"{name}.weight has shape {tuple(weight.shape)}, expected "
                                      f"({size},): the model was resharded or changed after the "
                                      "regularizer was built (FSDP1 is not supported; use fully_shard)")
            scales.append(weight)
        return scales

    def _evaluate(self) -> tuple[Any, Any]:
        import torch

        scales = self._full_scales()
        device = scales[0].device
        dtype = torch.float64 if any(s.dtype == torch.float64 for s in scales) else torch.float32
        if self._ops is None or self._ops.device != device or self._ops.dtype != dtype:
            self._ops = _TorchOps(self.plan, device, dtype)  # once per device and dtype
        with torch.autocast(device.type, enabled=False):
            flat = torch.cat([s.to(dtype) for s in scales]).abs()
            threshold = tensor_threshold(self.threshold)
            return evaluate(self.plan, flat, self._ops, threshold)

    def loss(self) -> Any:
        """The differentiable regularizer G, a float32 scalar tensor (float64 for a float64
        model), see :mod:`morphscope.regularizers.core`."""
        per_op, _ = self._evaluate()
        return per_op.sum()

    def loss_value(self) -> float:
        """G now, as a number (no graph kept)."""
        import torch

        with torch.no_grad():
            return self.loss().item()

    def gammas(self) -> dict[str, np.ndarray]:
        """Current bn scales by bn op name (numpy float64 copies of the full vectors)."""
        return {n: s.detach().float().cpu().numpy().astype(np.float64)
                for n, s in zip(self.bn_modules, self._full_scales())}

    def alive_widths(self) -> np.ndarray:
        """Alive channels per space now (a host copy of the tensor computation)."""
        import torch

        with torch.no_grad():
            _, widths = self._evaluate()
        return widths.cpu().numpy().astype(np.float64)

    def cost(self) -> float:
        """The alive cost of the target now: equal to the analyzers' count for these gammas."""
        return self.plan.cost(self.alive_widths())

    def structure(self) -> Any:
        """The learned structure now (a :class:`~morphscope.importers.checkpoints.LearnedStructure`),
        for :func:`morphscope.rebuild` and the analyzers."""
        return learned_structure(self)

    def widths_json(self, widths: np.ndarray | None = None) -> str:
        """The alive widths (now, or ``widths``) in morph-net's StructureExporter form."""
        return widths_json(self.graph, self.width_model,
                           self.alive_widths() if widths is None else widths)


class FlopsRegularizer(GammaRegularizer):
    """Targets FLOPs per inference: prunes early, high-resolution layers first."""

    target = "flops"


class ModelSizeRegularizer(GammaRegularizer):
    """Targets conv/linear kernel weights: prunes late, wide layers first."""

    target = "size"


class LatencyRegularizer(GammaRegularizer):
    """Targets roofline latency on ``hardware`` (K80, P4, T4, P100, V100, TPUv2)."""

    target = "latency"


class StructureLogger(core.StructureLogger):
    __doc__ = core.StructureLogger.__doc__

    def writes(self) -> bool:
        """Rank 0 of ``torch.distributed`` (or the only process), asked at each write."""
        return _is_rank_zero()
