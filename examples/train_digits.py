"""MorphNet end to end on scikit-learn's digits, on the CPU in a few minutes.

Trains a seed network with residual blocks, an inception-style concat block and a
depthwise-separable block: once plain, once with the FLOP regularizer and once with the model
size regularizer. Expands each learned structure to the seed's cost (FLOPs, resp. size) and
retrains it from scratch. Prints a table (structure, FLOPs, params, accuracy) and writes the
seed model (.pt2), the two regularized checkpoints and their cost logs to ``--out``: the
explorer's bundled example.

    python examples/train_digits.py [--out examples/digits] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import time
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


# The layers whose alive share the explorer and tests compare: early (16x16) vs late (4x4).
EARLY_LAYERS = ("stem.0", "res1.conv1.0")
LATE_LAYERS = ("pointwise.0", "res2.conv1.0")


def load_digits_tensors(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=seed,
                                           stratify=digits.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def train(model, data, epochs: int, regularizer=None, strength: float = 0.0, logger=None,
          seed: int = 0) -> float:
    """Adam with a one-cycle schedule, batch 64; returns test accuracy."""
    x_train, y_train, x_test, y_test = data
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = epochs * -(-len(y_train) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    step = 0
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y_train), generator=generator).split(64):
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            if regularizer is not None:
                loss = loss + strength * regularizer.loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if logger is not None:
                logger.step(step, loss=float(loss))
            step += 1
    model.eval()
    with torch.no_grad():
        return float((model(x_test).argmax(1) == y_test).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/digits")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--flops-strength", type=float, default=5e-8)
    parser.add_argument("--size-strength", type=float, default=6e-6)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits_tensors()
    example = torch.zeros(1, 1, SIDE, SIDE)
    started = time.time()

    seed_model = SeedNet()
    seed_accuracy = train(seed_model, data, args.epochs)
    rebuild.save_torch_pt2(seed_model, (1, SIDE, SIDE), out / "seed.pt2")
    rows = [("seed", counted_totals(seed_model), seed_accuracy)]
    for target, cls, strength in (("flops", FlopsRegularizer, args.flops_strength),
                                  ("size", ModelSizeRegularizer, args.size_strength)):
        torch.manual_seed(1)
        model = SeedNet()
        reg = cls(model, example)
        logger = StructureLogger(reg, out / f"{target}_structure", every=50)
        accuracy = train(model, data, args.epochs, reg, strength, logger)
        torch.save({k: v for k, v in model.state_dict().items() if k.endswith(".weight") and v.dim() == 1},
                   out / f"{target}_gammas.pt")
        gammas = reg.gammas()
        morphed = morph(reg.width_model, LearnedStructure(target, gammas=gammas), reg.threshold)
        rows.append((f"{target}-regularized (alive)", reg.width_model.totals(morphed.widths), accuracy))
        factor = solve_multiplier(reg.width_model, morphed.widths, target)
        plan = export_plan(reg.graph, reg.width_model, morphed, factor, gammas, reg.threshold)
        expanded = rebuild.rebuild_torch(SeedNet(), reg.graph, reg.width_model, plan)
        for module in expanded.modules():  # retrain from scratch
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        accuracy = train(expanded, data, args.epochs, seed=2)
        predicted = plan_totals(reg.width_model, plan)
        rows.append((f"{target}-expanded x{factor:.3f}", counted_totals(expanded), accuracy))
        assert rows[-1][1]["params"] == predicted["params"], "rebuilt model differs from prediction"

    table = []
    print(f"\n{'structure':<28} {'FLOPs':>11} {'params':>9} {'accuracy':>9}")
    for label, totals, accuracy in rows:
        table.append({"structure": label, "flops": totals["flops"], "params": totals["params"],
                      "accuracy": accuracy})
        print(f"{label:<28} {totals['flops']:>11,} {totals['params']:>9,} {accuracy:>9.3f}")
    (out / "results.json").write_text(json.dumps(table, indent=2) + "\n")
    print(f"\n{time.time() - started:.0f} s on {torch.get_num_threads()} CPU threads; wrote {out}")


def counted_totals(model: nn.Module) -> dict:
    """FLOPs and params of a model as it is, counted from a fresh capture."""
    counted = compile_width_model(load_module(model, (1, SIDE, SIDE)))
    return counted.totals(counted.seed_widths)


if __name__ == "__main__":
    main()
