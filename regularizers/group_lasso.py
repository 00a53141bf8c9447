"""morph-net's group-lasso regularizers (FLOPs, size, latency) for PyTorch and Keras.

For layers without batch norm (VGG without bn, MLPs): each output channel of a conv or dense
layer is scored by the norm of the weights writing it,
``l1_fraction * mean|w| + (1 - l1_fraction) * sqrt(mean w**2)`` (morph-net's
``GroupLassoRegularizer``; :mod:`morphscope.analyzers.group_lasso` is the numpy reference),
and the network regularizer is the paper's G with those scores in place of |gamma|: the same
plan, groups (max over a residual group's writers) and cost coefficients as the gamma family.
Batch norm plays no part (morph-net's group-lasso handlers have no bn source).

    reg = GroupLassoFlopsRegularizer(model, example_input=x[:1], threshold=1e-2)
    loss = task_loss + 1e-9 * reg.loss()
    reg.cost()   # equals ``morphscope report MODEL --checkpoint weights.pt --threshold 1e-2``
"""

from __future__ import annotations

from typing import Any

import numpy as np

from morphscope.analyzers.alive import DEFAULT_THRESHOLD
from morphscope.analyzers.conventions import DEFAULT_CONVENTION, Scope
from morphscope.analyzers.group_lasso import DEFAULT_L1_FRACTION, check_l1_fraction, writer_cover
from morphscope.importers.kernels import is_weight_source, kernel_out_axis
from morphscope.regularizers.core import evaluate, tensor_threshold
from morphscope.regularizers.keras_regularizer import KerasGammaRegularizer
from morphscope.regularizers.torch_regularizer import GammaRegularizer


def _weight_sources(graph: Any) -> list[str]:
    return [name for name, attrs in graph.ops() if is_weight_source(attrs)]


class GroupLassoRegularizer(GammaRegularizer):
    """Resource-weighted group lasso on conv/linear kernels of a PyTorch model.

    Parameters are those of :class:`~morphscope.regularizers.torch_regularizer.GammaRegularizer`
    (``strength``, ``target``, ``budget`` and ``adapt_every`` by keyword) plus ``l1_fraction``
    (in [0, 1], morph-net's default 0). ``threshold`` applies to the channel norms.
    """

    def __init__(self, model: Any, example_input: Any = None, graph: Any = None,
                 threshold: float = DEFAULT_THRESHOLD, hardware: str = "V100",
                 resource: str | None = None, convention: str = DEFAULT_CONVENTION,
                 scope: Scope | None = None, l1_fraction: float = DEFAULT_L1_FRACTION, **strength: Any) -> None:
        check_l1_fraction(l1_fraction)
        self.l1_fraction = l1_fraction
        super().__init__(model, example_input, graph, threshold, hardware, resource, convention, scope, **strength)

    def _cover(self) -> dict[int, list[tuple[str, int]]]:
        return writer_cover(self.width_model.spaces, _weight_sources(self.graph))

    def _full_scales(self) -> list[Any]:
        """Each member op's channel norms (differentiable in its weights)."""
        scores = []
        for name, module in self.bn_modules.items():
            weight = module.weight.movedim(kernel_out_axis("torch", self.graph[name]), 0).flatten(1)
            norm = weight.square().mean(dim=1).sqrt()
            if self.l1_fraction > 0.0:
                norm = self.l1_fraction * weight.abs().mean(dim=1) + (1.0 - self.l1_fraction) * norm
            scores.append(norm)
        return scores


class GroupLassoFlopsRegularizer(GroupLassoRegularizer):
    """Group lasso targeting FLOPs per inference."""

    target = "flops"


class GroupLassoModelSizeRegularizer(GroupLassoRegularizer):
    """Group lasso targeting conv/linear kernel weights."""

    target = "size"


class GroupLassoLatencyRegularizer(GroupLassoRegularizer):
    """Group lasso targeting roofline latency on ``hardware``."""

    target = "latency"


class KerasGroupLassoRegularizer(KerasGammaRegularizer):
    """Resource-weighted group lasso on a Keras model's Conv/Dense kernels (see
    :class:`GroupLassoRegularizer`)."""

    def __init__(self, model: Any, threshold: float = DEFAULT_THRESHOLD, hardware: str = "V100",
                 resource: str | None = None, convention: str = DEFAULT_CONVENTION,
                 scope: Scope | None = None, l1_fraction: float = DEFAULT_L1_FRACTION, **strength: Any) -> None:
        check_l1_fraction(l1_fraction)
        self.l1_fraction = l1_fraction
        super().__init__(model, threshold, hardware, resource, convention, scope, **strength)

    def _cover(self) -> dict[int, list[tuple[str, int]]]:
        return writer_cover(self.width_model.spaces, _weight_sources(self.graph))

    def _scale_variable(self, layer: Any) -> Any:
        return layer.kernel

    def _norms(self) -> list[Any]:
        """Each member layer's channel norms (differentiable in its kernel)."""
        ops = self.keras.ops
        scores = []
        for name, kernel in self.gamma_vars.items():
            axis = kernel_out_axis("keras", self.graph[name])
            weight = ops.reshape(ops.moveaxis(ops.cast(kernel, "float32"), axis, 0), (kernel.shape[axis], -1))
            norm = ops.sqrt(ops.mean(ops.square(weight), axis=1))
            if self.l1_fraction > 0.0:
                norm = self.l1_fraction * ops.mean(ops.abs(weight), axis=1) + (1.0 - self.l1_fraction) * norm
            scores.append(norm)
        return scores

    def _evaluate(self) -> tuple[Any, Any]:
        flat = self.keras.ops.concatenate(self._norms(), axis=0)
        return evaluate(self.plan, flat, self._ops, tensor_threshold(self.threshold))

    def gammas(self) -> dict[str, np.ndarray]:
        """Current channel norms by source op name (numpy float64 copies): the scores."""
        return {n: np.asarray(self.keras.ops.convert_to_numpy(v), dtype=np.float64)
                for n, v in zip(self.gamma_vars, self._norms())}


class KerasGroupLassoFlopsRegularizer(KerasGroupLassoRegularizer):
    """Group lasso targeting FLOPs per inference."""

    target = "flops"


class KerasGroupLassoModelSizeRegularizer(KerasGroupLassoRegularizer):
    """Group lasso targeting conv/linear kernel weights."""

    target = "size"


class KerasGroupLassoLatencyRegularizer(KerasGroupLassoRegularizer):
    """Group lasso targeting roofline latency on ``hardware``."""

    target = "latency"
