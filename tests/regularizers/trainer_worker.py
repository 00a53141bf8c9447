"""The HF Trainer and Lightning callbacks under DDP on two CPU processes (gloo).

``python -m torch.distributed.run --nproc-per-node 2 trainer_worker.py hf OUT`` and
``python trainer_worker.py lightning OUT`` (Lightning starts the second process itself).
Each rank writes ``OUT/<mode>_rank<r>.json`` (its strengths, and the gammas before and
after); the callbacks write ``OUT/<mode>_run``; rank 0 of Lightning saves ``OUT/last.ckpt``.
Not a test module itself (pytest collects ``test_*.py`` only).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for handbuilt

import handbuilt  # noqa: E402
from morphscope.regularizers.torch_regularizer import FlopsRegularizer  # noqa: E402

EXAMPLE = torch.zeros(1, 3, handbuilt.H, handbuilt.W)
STEPS = 4


class Classifier(torch.nn.Module):
    """The residual net as a Hugging Face style model: ``forward(pixel_values, labels)``
    returns a dict with the loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = handbuilt.torch_residual_net()

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        return {"logits": logits, **({"loss": F.cross_entropy(logits, labels)} if labels is not None else {})}


def samples(n: int = 16) -> list[dict]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, handbuilt.H, handbuilt.W, generator=generator)
    y = torch.randint(0, 5, (n,), generator=generator)
    return [{"pixel_values": x[i], "labels": y[i]} for i in range(n)]


def gammas(net: torch.nn.Module) -> list[float]:
    return [float(v) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) for v in m.weight.detach()]


def regularizer(net: torch.nn.Module) -> FlopsRegularizer:
    return FlopsRegularizer(net, EXAMPLE, target=0.5, strength=1e-6, adapt_every=1)


def run_hf(out: Path) -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from morphscope.regularizers.hf import MorphNetCallback

    model = Classifier()
    reg = regularizer(model.net)
    start = gammas(model.net)
    callback = MorphNetCallback(reg, out / "hf_run", every=1)  # built before the process group
    args = TrainingArguments(output_dir=str(out / "hf_trainer"), use_cpu=True, ddp_backend="gloo",
                             max_steps=STEPS, per_device_train_batch_size=2, learning_rate=0.05,
                             report_to=[], save_strategy="no", logging_strategy="no", seed=0,
                             dataloader_num_workers=0, disable_tqdm=True)
    strengths = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            strengths.append(reg.strength)

    trainer = Trainer(model=model, args=args, train_dataset=samples(), callbacks=[callback, Record()])
    trainer.train()
    rank = int(os.environ["RANK"])
    (out / f"hf_rank{rank}.json").write_text(json.dumps(
        {"strengths": strengths, "start": start, "end": gammas(model.net),
         "world": torch.distributed.get_world_size()}))


def run_lightning(out: Path) -> None:
    import lightning as L

    from morphscope.regularizers.lightning import MorphNetCallback

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = Classifier().net

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.model(batch["pixel_values"]), batch["labels"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    lit = Lit()
    reg = regularizer(lit.model)
    start = gammas(lit.model)
    strengths = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            strengths.append(reg.strength)

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(out / "lightning_root"),
                        callbacks=[MorphNetCallback(reg, out / "lightning_run", every=1), Record()])
    trainer.fit(lit, torch.utils.data.DataLoader(samples(), batch_size=2))
    trainer.save_checkpoint(out / "last.ckpt")
    (out / f"lightning_rank{trainer.global_rank}.json").write_text(json.dumps(
        {"strengths": strengths, "start": start, "end": gammas(lit.model), "world": trainer.world_size}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"hf": run_hf, "lightning": run_lightning}[sys.argv[1]](Path(sys.argv[2]))
