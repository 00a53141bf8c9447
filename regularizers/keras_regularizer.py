"""MorphNet regularizers for Keras 3 models (keras imported lazily, on construction).

    reg = KerasFlopsRegularizer(model)
    reg.attach(model, strength=1e-9)      # adds strength * reg.loss() to the training loss
    model.fit(..., callbacks=[KerasStructureLogger(reg, "learned_structure", every=100)])

``loss()`` reads the live ``gamma`` variables of the bn layers, so gradients reach them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from morphscope.analyzers.alive import DEFAULT_THRESHOLD
from morphscope.exporters.writers import widths_json
from morphscope.analyzers.widths import compile_width_model
from morphscope.regularizers.core import regularizer_plan


class KerasGammaRegularizer:
    """Resource-weighted group-L1 on a Keras model's bn gammas (see :mod:`morphscope.regularizers.core`)."""

    target = "flops"

    def __init__(self, model: Any, threshold: float = DEFAULT_THRESHOLD, hardware: str = "V100",
                 target: str | None = None) -> None:
        from morphscope.importers.keras_importer import import_keras, load_keras_model

        self.keras = import_keras()
        self.graph = load_keras_model(model)
        self.threshold = threshold
        self.width_model = compile_width_model(self.graph)
        self.plan = regularizer_plan(self.graph, self.width_model, target or self.target, hardware)
        layers = {layer.name: layer for layer in model._flatten_layers(include_self=False, recursive=True)}
        self.gamma_vars = {name: layers[name.split("/")[-1]].gamma
                           for cover in self.plan.members.values() for name, _ in cover}

    def gammas(self) -> dict[str, np.ndarray]:
        """Current bn scales by bn op name (numpy copies)."""
        return {n: np.asarray(v.numpy(), dtype=np.float64) for n, v in self.gamma_vars.items()}

    def alive_widths(self) -> np.ndarray:
        return self.plan.alive_widths(self.gammas(), self.threshold)

    def cost(self) -> float:
        """The alive cost of the target now: the analyzers' count for these gammas."""
        return self.plan.cost(self.alive_widths())

    def loss(self) -> Any:
        """The differentiable regularizer G as a backend scalar tensor."""
        ops = self.keras.ops
        spaces = self.width_model.spaces
        sums = []
        for space in range(spaces.n_spaces):
            cover = self.plan.members.get(space)
            if not cover:
                sums.append(ops.zeros(()))
                continue
            size = int(spaces.sizes[space])
            scales = [ops.abs(self.gamma_vars[bn][off:off + size]) for bn, off in cover]
            group = scales[0] if len(scales) == 1 else ops.max(ops.stack(scales), axis=0)
            sums.append(ops.sum(group))
        s = ops.stack(sums)

        def to_tensor(array: np.ndarray):
            return ops.convert_to_tensor(array, dtype="float32")

        return ops.sum(self.plan.value(s, self.alive_widths(), to_tensor, ops.matmul))

    def attach(self, model: Any, strength: float) -> None:
        """Make ``model.fit`` minimize ``task loss + strength * loss()``. Call it after
        ``compile``: it switches the model to eager steps, since the alive counts (constants
        of the regularizer) are re-read from the gammas at every step."""
        task_loss = model.compute_loss

        def compute_loss(*args, **kwargs):
            return task_loss(*args, **kwargs) + strength * self.loss()

        model.compute_loss = compute_loss
        model.run_eagerly = True

    def widths_json(self) -> str:
        return widths_json(self.graph, self.width_model, self.alive_widths())


class KerasFlopsRegularizer(KerasGammaRegularizer):
    """Targets FLOPs per inference."""

    target = "flops"


class KerasModelSizeRegularizer(KerasGammaRegularizer):
    """Targets conv/linear kernel weights."""

    target = "size"


class KerasLatencyRegularizer(KerasGammaRegularizer):
    """Targets roofline latency on ``hardware``."""

    target = "latency"


def keras_structure_logger(regularizer: KerasGammaRegularizer, out_dir: str | Path, every: int = 100):
    """A Keras callback writing ``alive_<step>`` and ``cost.jsonl`` lines every ``every`` batches."""
    keras = regularizer.keras
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    class StructureLogger(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0

        def on_train_batch_end(self, batch, logs=None):
            if self.step % every == 0:
                (out / f"alive_{self.step}").write_text(regularizer.widths_json() + "\n")
                loss = (logs or {}).get("loss")
                with open(out / "cost.jsonl", "a") as f:
                    f.write(json.dumps({"step": self.step, "cost": regularizer.cost(),
                                        "loss": None if loss is None else float(loss)}) + "\n")
            self.step += 1

    return StructureLogger()
