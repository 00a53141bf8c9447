"""MorphNet in a Hugging Face ``Trainer``: one callback adds the term and logs.

    from morphscope.regularizers.hf import MorphNetCallback

    reg = FlopsRegularizer(model, example_input, target=0.5)   # or strength=1e-9
    trainer = Trainer(model, args, train_dataset=..., callbacks=[MorphNetCallback(reg, "runs/flops")])

The callback hooks the model's forward: in training, the output's ``loss`` (what the Trainer
backpropagates) becomes ``loss + reg.penalty()``; after every optimizer step it steps a
:class:`~morphscope.regularizers.torch_regularizer.StructureLogger` (the strength adapts, rank
0 writes). Under DDP (``torchrun``) every rank adds the same term and only rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from morphscope.errors import MorphScopeError
from morphscope.regularizers.torch_regularizer import StructureLogger


class MorphNetCallback(TrainerCallback):
    """Adds ``reg.penalty()`` to the model's training loss and logs the structure.

    Parameters
    ----------
    regularizer : GammaRegularizer
        Built with ``strength=`` or ``target=`` / ``budget=``.
    out_dir : str or Path
        Where ``alive_<step>`` and ``cost.jsonl`` go (the explorer's run folder).
    every : int
        Optimizer steps between logged structures.
    metrics : dict or callable, optional
        Numbers to log beside the cost (see :class:`StructureLogger`).
    """

    def __init__(self, regularizer: Any, out_dir: str | Path, every: int = 100, metrics: Any = None) -> None:
        regularizer.require_strength()  # refuses now, in one line
        self.regularizer, self.metrics = regularizer, metrics
        self.logger = StructureLogger(regularizer, out_dir, every)
        self._hook, self._loss = None, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self._hook is None:
            self._hook = model.register_forward_hook(self._add_penalty)

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _add_penalty(self, module: Any, inputs: Any, output: Any) -> Any:
        import torch

        if not (module.training and torch.is_grad_enabled()):
            return output
        loss = output.get("loss") if hasattr(output, "get") else None
        if loss is None:
            raise MorphScopeError(f"{type(module).__name__}: the model's output has no loss (the Trainer "
                                  "computes it outside the model: compute_loss_func, label smoothing or a "
                                  "tuple output), so the callback cannot add the MorphNet term: add "
                                  "reg.penalty() in your Trainer's compute_loss and log with StructureLogger")
        output["loss"] = loss + self.regularizer.penalty()
        self._loss = output["loss"].detach()
        return output

    def on_step_end(self, args, state, control, **kwargs):
        self.logger.step(state.global_step, loss=self._loss, metrics=self.metrics)
