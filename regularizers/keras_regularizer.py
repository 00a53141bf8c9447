"""MorphNet regularizers for Keras 3 models (keras imported lazily, on construction; never torch).

    reg = KerasFlopsRegularizer(model)
    reg.attach(model, strength=1e-9)      # fit now minimizes task loss + strength * reg.loss()
    model.fit(..., callbacks=[keras_structure_logger(reg, "learned_structure", every=100)])

``loss()`` reads the live ``gamma`` variables of the bn layers, so gradients reach them, and is
pure ``keras.ops`` code (see :func:`morphscope.regularizers.core.evaluate`): ``fit`` runs
compiled, with ``jit_compile=True`` and under ``tf.distribute`` strategies.
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
from morphscope.regularizers.control import DEFAULT_ADAPT_EVERY
from morphscope.regularizers.core import (Strength, StructureLogger, evaluate, learned_structure, regularizer_plan,
                                          tensor_threshold)


class _KerasOps:
    """:class:`~morphscope.regularizers.core.TensorOps` on ``keras.ops`` (constants become
    graph constants when a train step is traced)."""

    def __init__(self, keras: Any, plan: Any) -> None:
        self.ops, self.plan = keras.ops, plan

    def const(self, name):
        array = self.plan.arrays[name]
        return self.ops.convert_to_tensor(array, dtype="int32" if array.dtype.kind == "i" else "float32")

    def take(self, x, index):
        return self.ops.take(x, index, axis=0)

    def amax(self, x, axis):
        return self.ops.max(x, axis=axis)

    def segment_sum(self, x, ids, n):
        return self.ops.segment_sum(x, ids, num_segments=n)

    def above(self, x, threshold):
        return self.ops.stop_gradient(self.ops.cast(self.ops.greater(x, threshold), x.dtype))

    def concat(self, xs):
        return self.ops.concatenate(xs, axis=0)

    def where(self, cond, a, b):
        return self.ops.where(cond, a, b)


class KerasGammaRegularizer(Strength):
    """Resource-weighted group-L1 on a Keras model's bn gammas (see :mod:`morphscope.regularizers.core`).

    Parameters
    ----------
    model : keras.Model
    threshold : float
        Alive means group max |gamma| > threshold (the analyzers' rule).
    hardware : str or Hardware
        The latency model for ``latency``: a named roofline or a measured profile.
    resource : str, optional
        ``flops``, ``size``, ``params`` or ``latency`` (default: the class's).
    convention, scope, strength, target, budget, adapt_every :
        As for :class:`~morphscope.regularizers.torch_regularizer.GammaRegularizer`; a
        strength given here is what :meth:`attach` uses by default.

    Raises
    ------
    MorphScopeError
        If nothing is regularizable (no bn scale on a prunable space: ``scale=False`` layers).

    Notes
    -----
    The loss is float32 under any dtype policy (``mixed_float16`` included).
    """

    target = "flops"

    def __init__(self, model: Any, threshold: float = DEFAULT_THRESHOLD, hardware: str = "V100",
                 resource: str | None = None, convention: str = DEFAULT_CONVENTION,
                 scope: Scope | None = None, *, strength: float | None = None,
                 target: float | None = None, budget: float | None = None,
                 adapt_every: int = DEFAULT_ADAPT_EVERY) -> None:
        from morphscope.importers.keras_importer import import_keras, load_keras_model

        self.keras = import_keras()
        self.graph = load_keras_model(model)
        self.threshold = threshold
        self.width_model = compile_width_model(self.graph, convention, scope)
        self.plan = regularizer_plan(self.graph, self.width_model, resource or self.target, hardware,
                                     self._cover())
        layers = {layer.name: layer for layer in model._flatten_layers(include_self=False, recursive=True)}
        bn_layers = {name: layers[name.split("/")[-1]] for name in self.plan.bn_names}
        self.gamma_vars = {name: self._scale_variable(layer) for name, layer in bn_layers.items()}
        frozen = [n for n, layer in bn_layers.items() if not (layer.trainable and self.gamma_vars[n].trainable)]
        if frozen:
            warnings.warn(f"{model.name}: {len(frozen)} bn scales are frozen (trainable=False), the "
                          f"regularizer cannot move them: {', '.join(frozen)}", stacklevel=2)
        self._ops = _KerasOps(self.keras, self.plan)
        self._init_strength(strength, target, budget, adapt_every)

    def _store_strength(self, value: float) -> Any:
        """A non-trainable float32 variable, assigned in place (a traced step reads it)."""
        return self.keras.Variable(value, dtype="float32", trainable=False, name="morphnet_strength")

    def _assign_strength(self, value: float) -> None:
        self._strength.assign(value)

    def _cover(self) -> dict[int, list[tuple[str, int]]] | None:
        """The ops whose scores regularize each space: None, the bn scales (the group-lasso
        family overrides it)."""
        return None

    def _scale_variable(self, layer: Any) -> Any:
        """The variable a member layer is scored by: its bn scale."""
        return layer.gamma

    def _evaluate(self) -> tuple[Any, Any]:
        ops = self.keras.ops
        flat = ops.abs(ops.concatenate([ops.cast(v, "float32") for v in self.gamma_vars.values()], axis=0))
        return evaluate(self.plan, flat, self._ops, tensor_threshold(self.threshold))

    def loss(self) -> Any:
        """The differentiable regularizer G, a float32 scalar tensor."""
        per_op, _ = self._evaluate()
        return self.keras.ops.sum(per_op)

    def loss_value(self) -> float:
        """G now, as a number."""
        return float(self.keras.ops.convert_to_numpy(self.loss()))

    def gammas(self) -> dict[str, np.ndarray]:
        """Current bn scales by bn op name (numpy float64 copies)."""
        return {n: np.asarray(self.keras.ops.convert_to_numpy(v), dtype=np.float64)
                for n, v in self.gamma_vars.items()}

    def alive_widths(self) -> np.ndarray:
        """Alive channels per space now (a host copy of the tensor computation)."""
        _, widths = self._evaluate()
        return np.asarray(self.keras.ops.convert_to_numpy(widths), dtype=np.float64)

    def cost(self) -> float:
        """The alive cost of the target now: the analyzers' count for these gammas."""
        return self.plan.cost(self.alive_widths())

    def attach(self, model: Any, strength: float | None = None) -> None:
        """Make ``model.fit`` (and ``evaluate``) minimize ``task loss + penalty()``.

        ``strength`` fixes the strength (default: the one given when building the regularizer,
        or the one its ``target`` steers; the logger callback adapts it). Works before or after
        ``compile`` and after an earlier ``fit``: it wraps the model's ``compute_loss`` (the
        term is added the way Keras adds ``add_loss`` terms, scaled for ``tf.distribute``
        replicas) and drops the model's traced train/test functions, which Keras would
        otherwise reuse. Attaching again replaces the earlier term. The model stays compiled
        (no ``run_eagerly``). A model with its own ``train_step`` is regularized when that
        step calls ``self.compute_loss``; one that does not is refused when fit first runs it.

        Raises
        ------
        MorphScopeError
            With no strength at all, with ``strength`` for a regularizer that has a target,
            or (from ``fit``) for a custom ``train_step`` that never calls ``self.compute_loss``.
        """
        if strength is not None:
            if self.controller is not None:
                raise MorphScopeError(f"{model.name}: the regularizer steers its strength to a target; "
                                      "attach it without strength=")
            self._init_strength(strength, None, None, 1)
        self.require_strength()
        task_loss = getattr(model, "_morphscope_task_loss", model.compute_loss)
        model._morphscope_task_loss = task_loss
        calls = []

        def compute_loss(x=None, y=None, y_pred=None, sample_weight=None, training=True):
            calls.append(training)
            term = model._aggregate_additional_loss(self.penalty())
            return task_loss(x, y, y_pred, sample_weight, training=training) + term

        model.compute_loss = compute_loss
        step_owner = next(c for c in type(model).__mro__ if "train_step" in vars(c))
        if not step_owner.__module__.startswith("keras."):
            own_step = getattr(model, "_morphscope_train_step", model.train_step)
            model._morphscope_train_step = own_step

            def train_step(*args, **kwargs):
                calls.clear()
                logs = own_step(*args, **kwargs)
                if not calls:
                    raise MorphScopeError(
                        f"{model.name}: its own train_step ({step_owner.__name__}.train_step) never calls "
                        "self.compute_loss, so attach cannot add the MorphNet term: compute the loss with "
                        "`loss = self.compute_loss(x, y, y_pred)` there, or add `reg.penalty()` to your "
                        "loss yourself instead of attaching")
                return logs

            model.train_step = train_step
        model.train_function = model.test_function = None

    def structure(self) -> Any:
        """The learned structure now (a :class:`~morphscope.importers.checkpoints.LearnedStructure`),
        for :func:`morphscope.rebuild` and the analyzers."""
        return learned_structure(self)

    def widths_json(self, widths: np.ndarray | None = None) -> str:
        """The alive widths (now, or ``widths``) in morph-net's StructureExporter form."""
        return widths_json(self.graph, self.width_model,
                           self.alive_widths() if widths is None else widths)


class KerasFlopsRegularizer(KerasGammaRegularizer):
    """Targets FLOPs per inference."""

    target = "flops"


class KerasModelSizeRegularizer(KerasGammaRegularizer):
    """Targets conv/linear kernel weights."""

    target = "size"


class KerasLatencyRegularizer(KerasGammaRegularizer):
    """Targets roofline latency on ``hardware``."""

    target = "latency"


def keras_structure_logger(regularizer: KerasGammaRegularizer, out_dir: str | Path, every: int = 100,
                           metrics: Any = None):
    """A Keras callback: a :class:`~morphscope.regularizers.core.StructureLogger` stepped
    after every training batch (counted across epochs), which adapts a targeted strength and
    writes ``alive_<step>`` and a ``cost.jsonl`` line every ``every`` batches: step, target,
    cost, the batch's loss, the strength and ``metrics`` (a dict or a callable returning
    one, e.g. a validation accuracy)."""
    logger = StructureLogger(regularizer, out_dir, every)

    class MorphNetLogger(regularizer.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0

        def on_train_batch_end(self, batch, logs=None):
            logger.step(self.step, (logs or {}).get("loss"), metrics)
            self.step += 1

    return MorphNetLogger()
