"""A FLOP target in one run on real data: Fashion-MNIST, targets 0.3, 0.5 and 0.7 of the seed.

Trains a small residual CNN (18 MFLOPs) on Debian's ``dataset-fashion-mnist`` (60,000
training and 10,000 test images, read from /usr/share/datasets/fashion-mnist; nothing is
downloaded) with ``FlopsRegularizer(..., target=t)``: the strength is steered by the
controller (regularizers/control.py) from its first step, with no strength given. Adam at lr
1e-3, the bn scales at 1e-2 (see below), batch 64, ``--epochs`` epochs (2), one CPU thread per
run unless ``--threads``. Prints, per target, the final alive FLOPs against the budget, the
test accuracy of the regularized network (not retrained: the structure is what is measured)
and the strength trace every 100 steps; writes everything to ``--out`` (JSON) when given.

Why the bn scales get 10x the learning rate: under Adam a scale moves about lr per step
whatever its gradient, so from its initial 1 it reaches the 1e-2 threshold after about 1/lr
steps: 1,000 at lr 1e-3, more than the ~940 steps of one epoch at batch 64. At 1e-2 that is
~100 steps. The controller cannot shorten that delay, only avoid winding up during it.

    python bench/bench_strength_target.py [--targets 0.3 0.5 0.7] [--epochs 2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from morphscope.analyzers.hardware import load_profile
from morphscope.regularizers.torch_regularizer import FlopsRegularizer, LatencyRegularizer, StructureLogger

DATA = Path("/usr/share/datasets/fashion-mnist")
REGULARIZERS = {"flops": FlopsRegularizer, "latency": LatencyRegularizer}


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) scaled to [0, 1] and labels, from the package's idx files."""
    prefix = "train" if split == "train" else "t10k"
    try:
        images = gzip.decompress((DATA / f"{prefix}-images-idx3-ubyte.gz").read_bytes())
        labels = gzip.decompress((DATA / f"{prefix}-labels-idx1-ubyte.gz").read_bytes())
    except FileNotFoundError:
        raise SystemExit(f"{DATA} is missing: apt-get install dataset-fashion-mnist") from None
    x = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    y = np.frombuffer(labels, np.uint8, offset=8).astype(np.int64)
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.a = conv_bn(channels, hidden)
        self.b = nn.Sequential(nn.Conv2d(hidden, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return F.relu(x + self.b(self.a(x)))


class SeedCNN(nn.Module):
    """28x28: stem 16 -> 14x14: 32, residual (hidden 32) -> 7x7: 64, residual (hidden 64):
    18.2 MFLOPs (2 x 9.1 M multiply-adds)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(1, 16), conv_bn(16, 32, 2), Residual(32, 32),
                                      conv_bn(32, 64, 2), Residual(64, 64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(x), 1000))
    model.train()
    return right / len(x)


def run(target: float, epochs: int, train, test, out: Path | None, resource: str = "flops",
        hardware: Any = "V100") -> tuple[dict, nn.Module, Any]:
    """Train one run steered to ``target`` x the seed's ``resource``; its result, the trained
    model and the regularizer."""
    torch.manual_seed(0)
    model = SeedCNN()
    reg = REGULARIZERS[resource](model, train[0][:1], hardware=hardware, target=target)
    scales = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight,)]
    others = [p for p in model.parameters() if all(p is not s for s in scales)]
    optimizer = torch.optim.Adam([{"params": others}, {"params": scales, "lr": 1e-2}], lr=1e-3)
    logger = StructureLogger(reg, out / f"{resource}_{target}", every=100) if out else None
    x, y = train
    step, trace, start = 0, [], time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x) - 63, 64):
            batch = order[i:i + 64]
            loss = F.cross_entropy(model(x[batch]), y[batch]) + reg.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if logger:
                logger.step(step, loss=loss.item())
            else:
                reg.adapt(step)
            if step % 100 == 0:
                share = reg.cost() / reg.controller.seed_cost
                trace.append({"step": step, "strength": reg.strength, "cost_share": share})
                print(f"  {resource} target {target}: step {step:5d}  strength {reg.strength:.3g}  "
                      f"alive {resource} {trace[-1]['cost_share']:.3f} of the seed's", flush=True)
            step += 1
    final = reg.cost()
    result = {"resource": resource, "target": target, "seed_cost": reg.controller.seed_cost,
              "budget": reg.controller.budget, "final_cost": final, "final_share": final / reg.controller.seed_cost,
              "error_vs_budget": final / reg.controller.budget - 1.0, "test_accuracy": accuracy(model, *test),
              "steps": step, "seconds": time.perf_counter() - start, "trace": trace}
    print(f"{resource} target {target}: final {result['final_share']:.3f} of the seed's {resource} "
          f"({100 * result['error_vs_budget']:+.1f}% vs the budget), test accuracy "
          f"{result['test_accuracy']:.4f}, {result['seconds']:.0f} s", flush=True)
    return result, model, reg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resource", choices=sorted(REGULARIZERS), default="flops")
    parser.add_argument("--hardware", default="V100", help="for latency: a named roofline or a profile JSON file")
    parser.add_argument("--out", type=Path, help="folder for results.json and each run's StructureLogger files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load("train"), load("test")
    hardware = load_profile(args.hardware) if args.hardware.endswith(".json") else args.hardware
    results = [run(t, args.epochs, train, test, args.out, args.resource, hardware)[0] for t in args.targets]
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
