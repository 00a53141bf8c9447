"""Training-step overhead of the MorphNet regularizer: resnet18, batch 32, CPU.

Times SGD steps (forward, backward, update) with and without ``FlopsRegularizer.loss()`` in
the same process, interleaved, and prints the ratio.

    python bench/bench_regularizer.py [--steps 6] [--batch 32]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torchvision
from torch.nn import functional as F

from morphscope.regularizers.torch_regularizer import FlopsRegularizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    start = time.perf_counter()
    reg = FlopsRegularizer(model, torch.zeros(1, 3, 224, 224))
    t_build = time.perf_counter() - start
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, 224, 224)
    y = torch.randint(0, 1000, (args.batch,))

    def step(regularized: bool) -> float:
        begin = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        if regularized:
            loss = loss + 1e-9 * reg.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - begin

    step(False), step(True)  # warm up
    plain, regularized = [], []
    for _ in range(args.steps):
        plain.append(step(False))
        regularized.append(step(True))
    loss_only = []
    for _ in range(20):
        begin = time.perf_counter()
        reg.loss().backward()
        loss_only.append(time.perf_counter() - begin)
    p, r = statistics.median(plain), statistics.median(regularized)
    print(f"resnet18, batch {args.batch}, CPU {torch.get_num_threads()} threads, median of {args.steps}")
    print(f"  regularizer built once (capture + compile): {t_build:.2f} s")
    print(f"  plain step {p:.3f} s, regularized step {r:.3f} s: overhead {(r / p - 1) * 100:+.1f}%")
    print(f"  loss() + its backward alone: {statistics.median(loss_only) * 1e3:.1f} ms "
          f"({statistics.median(loss_only) / p * 100:.2f}% of a plain step)")


if __name__ == "__main__":
    main()
