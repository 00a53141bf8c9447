"""MorphNet end to end on scikit-learn's digits, on the CPU in a few minutes.

Trains a seed network with residual blocks, an inception-style concat block and a
depthwise-separable block: once plain, once with the FLOP regularizer and once with the model
size regularizer. Expands each learned structure to the seed's cost (FLOPs, resp. size) and
retrains it from scratch. Prints a table (structure, FLOPs, params, accuracy) and writes the
seed model (.pt2), the two regularized checkpoints and their cost logs to ``--out``
(``--out examples/digits`` refreshes the explorer's bundled example; the default folder,
``digits_run``, leaves the tracked files alone).

    python examples/train_digits.py [--out digits_run] [--epochs 25] [--only size]

``--only`` reruns some of the three jobs and keeps the other rows of ``--out``'s results.json
(and their files).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from morphscope.analyzers.morph import export_plan, morph, plan_totals
from morphscope.analyzers.widths import compile_width_model, solve_multiplier
from morphscope.exporters import rebuild
from morphscope.importers.checkpoints import LearnedStructure
from morphscope.importers.torch_importer import load_module
from morphscope.regularizers.torch_regularizer import FlopsRegularizer, ModelSizeRegularizer, StructureLogger

SIDE = 16  # digits are 8x8; upsampled so early layers see 16x16 maps
TRAIN_SIZE, VAL_SIZE, NOISE = 400, 300, 0.3  # few samples and noisy pixels: accuracy off the ceiling
BATCH = 16
# bn scales learn faster under a regularizer, so a short run can prune. The size run's scales
# move faster still: the model size of one channel of the tied 4x4 residual stream (pointwise.0 /
# res2.conv2.0) is large only while res2.conv1 is wide (about 3,150 params per channel with
# 170 inner channels, about 650 once it is cut to 31), so only a fast start cuts the stream.
GAMMA_LR_GAIN = {"flops": 3, "size": 20}
LOG_EVERY = 20  # steps between logged structures
FLOPS_STRENGTH, SIZE_STRENGTH = 1.1e-7, 5e-6


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv1, self.conv2 = conv_bn(channels, hidden), conv_bn(hidden, channels)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class InceptionBlock(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch1 = conv_bn(cin, 30, 1)
        self.branch3_reduce, self.branch3 = conv_bn(cin, 22, 1), conv_bn(22, 34)
        self.branch_pool = conv_bn(cin, 14, 1)

    def forward(self, x):
        pooled = F.max_pool2d(x, 3, 1, 1)
        return F.relu(torch.cat([self.branch1(x), self.branch3(F.relu(self.branch3_reduce(x))),
                                 self.branch_pool(pooled)], dim=1))


class SeedNet(nn.Module):
    """16x16: stem 28, residual 28 (hidden 36) | 8x8: down 60, inception 30+34+14 = 78 |
    4x4: separable 150, residual 150 (hidden 170) | fc 10. Widths differ from one another so
    a uniform width multiplier grows them at different factors (finer cost steps)."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(1, 28)
        self.res1 = ResidualBlock(28, 36)
        self.down = conv_bn(28, 60, stride=2)
        self.inception = InceptionBlock(60)
        self.depthwise = conv_bn(78, 78, stride=2, groups=78)
        self.pointwise = conv_bn(78, 150, 1)
        self.res2 = ResidualBlock(150, 170)
        self.fc = nn.Linear(150, 10)

    def forward(self, x):
        x = self.res1(F.relu(self.stem(x)))
        x = self.inception(F.relu(self.down(x)))
        x = F.relu(self.pointwise(F.relu(self.depthwise(x))))
        return self.fc(self.res2(x).mean((2, 3)))


REGULARIZERS = {"flops": FlopsRegularizer, "size": ModelSizeRegularizer}
JOBS = ["seed", "flops", "size"]  # results.json's row order

# The layers whose alive share the explorer and tests compare: early (16x16) vs late (4x4).
EARLY_LAYERS = ("stem.0", "res1.conv1.0")
LATE_LAYERS = ("pointwise.0", "res2.conv1.0")


def load_digits_tensors(seed: int = 0, train_size: int = TRAIN_SIZE, val_size: int = VAL_SIZE,
                        noise: float = NOISE):
    """A harder digits task: ``train_size`` training images, ``val_size`` validation images (the
    logger's metric), the rest (about 1,000) held out for test; every image gets fixed Gaussian
    pixel noise of std ``noise`` (pixels in [0, 1]). Returns train, val and test (x, y) pairs."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(1234))
    x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target)
    idx = np.arange(len(y))
    idx_train, idx_rest = train_test_split(idx, train_size=train_size, random_state=seed,
                                           stratify=digits.target)
    idx_val, idx_test = train_test_split(idx_rest, train_size=val_size, random_state=seed,
                                         stratify=digits.target[idx_rest])
    return tuple((x[i], y[i]) for i in (idx_train, idx_val, idx_test))


def accuracy(model, xy) -> float:
    """Share of ``xy`` the model classifies right (eval mode)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = float((model(xy[0]).argmax(1) == xy[1]).float().mean())
    model.train(was_training)
    return value


def train(model, data, epochs: int, regularizer=None, strength: float = 0.0, logger=None,
          seed: int = 0, gamma_gain: float = 3) -> float:
    """Adam with a one-cycle schedule, batch 16 (bn scales at ``gamma_gain`` x the learning
    rate when regularized); logs validation accuracy with the cost;
    returns test accuracy."""
    (x_train, y_train), val, test = data
    generator = torch.Generator().manual_seed(seed)
    gammas = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    others = [p for p in model.parameters() if all(p is not g for g in gammas)]
    gain = gamma_gain if regularizer is not None else 1
    optimizer = torch.optim.Adam([{"params": others}, {"params": gammas}], lr=3e-3)
    steps = epochs * -(-len(y_train) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[3e-3, 3e-3 * gain], total_steps=steps)
    step = 0
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y_train), generator=generator).split(BATCH):
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            if regularizer is not None:
                loss = loss + strength * regularizer.loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if logger is not None:
                logger.step(step, loss=loss.item(),
                            metrics=lambda: {"val_accuracy": accuracy(model, val)})
            step += 1
    return accuracy(model, test)


def seed_job(out: Path, epochs: int) -> list[tuple[str, dict, float]]:
    """Train the plain seed network and save it as ``seed.pt2``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SeedNet()
    test_accuracy = train(model, load_digits_tensors(), epochs)
    rebuild.save_torch_pt2(model, (1, SIDE, SIDE), out / "seed.pt2")
    return [("seed", counted_totals(model), test_accuracy)]


def regularized_job(out: Path, epochs: int, target: str, strength: float) -> list[tuple[str, dict, float]]:
    """Train with the ``target`` regularizer (logging the run), save its gammas, expand the
    learned structure to the seed's cost and retrain that from scratch."""
    torch.set_num_threads(1)
    torch.manual_seed(1)
    data = load_digits_tensors()
    model = SeedNet()
    reg = REGULARIZERS[target](model, torch.zeros(1, 1, SIDE, SIDE))
    run_dir = out / f"{target}_structure"
    shutil.rmtree(run_dir, ignore_errors=True)  # the logger appends
    logger = StructureLogger(reg, run_dir, every=LOG_EVERY)
    test_accuracy = train(model, data, epochs, reg, strength, logger, gamma_gain=GAMMA_LR_GAIN[target])
    torch.save({k: v for k, v in model.state_dict().items() if k.endswith(".weight") and v.dim() == 1},
               out / f"{target}_gammas.pt")
    gammas = reg.gammas()
    morphed = morph(reg.width_model, LearnedStructure(target, gammas=gammas), reg.threshold)
    rows = [(f"{target}-regularized (alive)", reg.width_model.totals(morphed.widths), test_accuracy)]
    factor = solve_multiplier(reg.width_model, morphed.widths, target)
    plan = export_plan(reg.graph, reg.width_model, morphed, factor, gammas, reg.threshold)
    expanded = rebuild.rebuild_torch(SeedNet(), reg.graph, reg.width_model, plan)
    for module in expanded.modules():  # retrain from scratch
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    test_accuracy = train(expanded, data, epochs, seed=2)
    predicted = plan_totals(reg.width_model, plan)
    rows.append((f"{target}-expanded x{factor:.3f}", counted_totals(expanded), test_accuracy))
    if rows[-1][1]["params"] != predicted["params"]:
        raise RuntimeError(f"rebuilt {target}-expanded model has {rows[-1][1]['params']} params, "
                           f"predicted {predicted['params']}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="digits_run", help="output folder (default digits_run; "
                        "examples/digits replaces the bundled example)")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--flops-strength", type=float, default=FLOPS_STRENGTH)
    parser.add_argument("--size-strength", type=float, default=SIZE_STRENGTH)
    parser.add_argument("--workers", type=int, default=2, help="processes, one CPU thread each")
    parser.add_argument("--only", nargs="+", choices=JOBS, default=JOBS,
                        help="rerun these jobs only; the others' rows in --out/results.json are kept")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kept = {}
    if set(args.only) != set(JOBS):
        old = json.loads((out / "results.json").read_text())
        kept = {job: [(r["structure"], r, r["accuracy"]) for r in old
                      if r["structure"].split(" ")[0].split("-")[0] == job] for job in JOBS}
    started = time.time()
    jobs = {"seed": (seed_job, (out, args.epochs)),
            "flops": (regularized_job, (out, args.epochs, "flops", args.flops_strength)),
            "size": (regularized_job, (out, args.epochs, "size", args.size_strength))}
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {job: pool.submit(fn, *a) for job, (fn, a) in jobs.items() if job in args.only}
        rows = [row for job in JOBS for row in (futures[job].result() if job in futures else kept[job])]

    table = []
    print(f"\n{'structure':<28} {'FLOPs':>11} {'params':>9} {'accuracy':>9}")
    for label, totals, test_accuracy in rows:
        table.append({"structure": label, "flops": totals["flops"], "params": totals["params"],
                      "accuracy": test_accuracy})
        print(f"{label:<28} {totals['flops']:>11,} {totals['params']:>9,} {test_accuracy:>9.3f}")
    (out / "results.json").write_text(json.dumps(table, indent=2) + "\n")
    print(f"\n{time.time() - started:.0f} s in {args.workers} processes of one CPU thread; wrote {out}")


def counted_totals(model: nn.Module) -> dict:
    """FLOPs and params of a model as it is, counted from a fresh capture."""
    counted = compile_width_model(load_module(model, (1, SIDE, SIDE)))
    return counted.totals(counted.seed_widths)


if __name__ == "__main__":
    main()
