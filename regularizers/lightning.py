"""MorphNet in PyTorch Lightning: one callback adds the term and logs.

    from morphscope.regularizers.lightning import MorphNetCallback

    reg = FlopsRegularizer(lit.model, example_input, target=0.5)   # or strength=1e-9
    trainer = L.Trainer(strategy="ddp", callbacks=[MorphNetCallback(reg, "runs/flops")])

The callback wraps the LightningModule's ``training_step``: the loss it returns (a tensor, or
a dict's ``"loss"``) becomes ``loss + reg.penalty()``; after every optimizer step it steps a
:class:`~morphscope.regularizers.torch_regularizer.StructureLogger` (the strength adapts,
global rank 0 writes). Lightning's own ``.ckpt`` files load as checkpoints of the inner
network (``morphscope report MODEL --checkpoint last.ckpt``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from morphscope.errors import MorphScopeError
from morphscope.regularizers.torch_regularizer import StructureLogger


class MorphNetCallback(Callback):
    """Adds ``reg.penalty()`` to the training step's loss and logs the structure.

    Parameters are those of :class:`morphscope.regularizers.hf.MorphNetCallback`. Manual
    optimization (``training_step`` returning None) is refused when the first step runs: add
    ``reg.penalty()`` to the loss you pass to ``manual_backward`` and step a StructureLogger.
    """

    def __init__(self, regularizer: Any, out_dir: str | Path, every: int = 100, metrics: Any = None) -> None:
        regularizer.require_strength()  # refuses now, in one line
        self.regularizer, self.metrics = regularizer, metrics
        self.logger = StructureLogger(regularizer, out_dir, every)
        self._logged_step = None

    def on_fit_start(self, trainer, pl_module):
        step = vars(pl_module).get("_morphscope_training_step", pl_module.training_step)
        pl_module._morphscope_training_step = step
        penalty = self.regularizer.penalty

        def training_step(*args, **kwargs):
            out = step(*args, **kwargs)
            if out is None:
                raise MorphScopeError(f"{type(pl_module).__name__}.training_step returns no loss (manual "
                                      "optimization), so the callback cannot add the MorphNet term: add "
                                      "reg.penalty() to the loss you pass to manual_backward")
            if isinstance(out, Mapping):
                return {**out, "loss": out["loss"] + penalty()}
            return out + penalty()

        pl_module.training_step = training_step

    def on_fit_end(self, trainer, pl_module):
        pl_module.training_step = pl_module.__dict__.pop("_morphscope_training_step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self._logged_step:  # gradient accumulation: no optimizer step yet
            return
        self._logged_step = trainer.global_step
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        self.logger.step(trainer.global_step, loss=loss, metrics=self.metrics)
