"""MorphNet regularizers for PyTorch models (torch imported lazily, on construction).

    reg = FlopsRegularizer(model, example_input=torch.zeros(1, 3, 224, 224))
    loss = task_loss + strength * reg.loss()     # strength: e.g. 1e-9 for FLOPs
    reg.cost()                                   # alive FLOPs now, as the analyzers count them

The bn modules are found by the graph's op names (module paths); ``loss()`` reads their live
``weight`` parameters, so gradients flow to the gammas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from morphscope.analyzers.alive import DEFAULT_THRESHOLD
from morphscope.exporters.writers import widths_json
from morphscope.analyzers.widths import compile_width_model
from morphscope.graph import ChannelGraph
from morphscope.regularizers.core import regularizer_plan


class GammaRegularizer:
    """Resource-weighted group-L1 on bn scales, for one target resource.

    Parameters
    ----------
    model : torch.nn.Module
    example_input : torch.Tensor, optional
        One batch-1 input to capture the graph with; or pass ``graph``.
    graph : ChannelGraph, optional
        An already imported graph of ``model``.
    threshold : float
        Alive means group max |gamma| > threshold (the analyzers' rule).
    target : str
        ``flops``, ``size``, ``params`` or ``latency``.
    hardware : str
        Device of the roofline for ``latency``.
    """

    target = "flops"

    def __init__(self, model: Any, example_input: Any = None, graph: ChannelGraph | None = None,
                 threshold: float = DEFAULT_THRESHOLD, hardware: str = "V100",
                 target: str | None = None) -> None:
        from morphscope.importers.torch_importer import load_module

        if graph is None:
            if example_input is None:
                raise ValueError("pass example_input (one batch-1 input) or graph")
            was_training = model.training
            graph = load_module(model, tuple(example_input.shape[1:]), name=type(model).__name__)
            model.train(was_training)
        self.graph = graph
        self.threshold = threshold
        self.width_model = compile_width_model(graph)
        self.plan = regularizer_plan(graph, self.width_model, target or self.target, hardware)
        self.bn_modules = {name: model.get_submodule(name)
                           for cover in self.plan.members.values() for name, _ in cover}

    def gammas(self) -> dict[str, np.ndarray]:
        """Current bn scales by bn op name (numpy copies)."""
        return {n: m.weight.detach().cpu().numpy().astype(np.float64) for n, m in self.bn_modules.items()}

    def alive_widths(self) -> np.ndarray:
        """Alive channels per space now."""
        return self.plan.alive_widths(self.gammas(), self.threshold)

    def cost(self) -> float:
        """The alive cost of the target now: equal to the analyzers' count for these gammas."""
        return self.plan.cost(self.alive_widths())

    def loss(self) -> Any:
        """The differentiable regularizer G (a scalar tensor), see :mod:`morphscope.regularizers.core`."""
        import torch

        spaces = self.width_model.spaces
        first = next(iter(self.bn_modules.values())).weight
        device, dtype = first.device, first.dtype
        group_sums = []
        for space in range(spaces.n_spaces):
            cover = self.plan.members.get(space)
            if not cover:
                group_sums.append(torch.zeros((), device=device, dtype=dtype))
                continue
            size = int(spaces.sizes[space])
            scales = [self.bn_modules[bn].weight[off:off + size].abs() for bn, off in cover]
            group = scales[0] if len(scales) == 1 else torch.stack(scales).amax(dim=0)
            group_sums.append(group.sum())
        s = torch.stack(group_sums)

        def to_tensor(array: np.ndarray):
            return torch.as_tensor(array, dtype=dtype, device=device)

        return self.plan.value(s, self.alive_widths(), to_tensor).sum()

    def widths_json(self) -> str:
        """The alive widths now, in morph-net's StructureExporter form."""
        return widths_json(self.graph, self.width_model, self.alive_widths())


class FlopsRegularizer(GammaRegularizer):
    """Targets FLOPs per inference: prunes early, high-resolution layers first."""

    target = "flops"


class ModelSizeRegularizer(GammaRegularizer):
    """Targets conv/linear kernel weights: prunes late, wide layers first."""

    target = "size"


class LatencyRegularizer(GammaRegularizer):
    """Targets roofline latency on ``hardware`` (K80, P4, T4, P100, V100, TPUv2)."""

    target = "latency"


class StructureLogger:
    """Every ``every`` steps, writes ``<out>/alive_<step>`` (morph-net's widths JSON) and
    appends ``{"step", "target", "cost", "loss", **metrics}`` to ``<out>/cost.jsonl``, so the
    explorer can plot cost against step and the cost against a user metric.

    Call it once per training step: ``logger.step(step, loss=float(total_loss))``.
    """

    def __init__(self, regularizer: GammaRegularizer, out_dir: str | Path, every: int = 100) -> None:
        self.regularizer = regularizer
        self.out = Path(out_dir)
        self.every = every
        self.out.mkdir(parents=True, exist_ok=True)

    def step(self, step: int, loss: float | None = None, metrics: Any = None) -> None:
        """Log ``step`` if it is a multiple of ``every``. ``metrics``: user numbers to record beside
        the cost (e.g. ``{"val_accuracy": 0.93}``), or a callable returning them, called only on
        logged steps."""
        if step % self.every:
            return
        (self.out / f"alive_{step}").write_text(self.regularizer.widths_json() + "\n")
        extra = metrics() if callable(metrics) else (metrics or {})
        record = {"step": step, "target": self.regularizer.plan.target, "cost": self.regularizer.cost(),
                  "loss": loss, **{k: float(v) for k, v in extra.items()}}
        with open(self.out / "cost.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
