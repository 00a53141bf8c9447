"""Training-step overhead of the MorphNet FLOP regularizer in PyTorch: resnet50, batch 32, CPU.

Times SGD steps (forward, backward, update) with and without ``1e-9 * reg.loss()`` in the
same process, interleaved, eager and compiled, and prints the ratios. Compiled: the model
is compiled once (``torch.compile``, inductor) and shared by both variants; the regularized
step adds ``reg.loss()`` compiled with ``fullgraph=True`` (one graph, no break), so the
comparison costs one big compile instead of two. The Keras epoch comparison is
``bench/bench_keras_regularizer.py`` (TensorFlow and torch are kept in separate processes).

    python bench/bench_regularizer.py [--model resnet50] [--steps 5] [--batch 32] [--no-compile]
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

STRENGTH = 1e-9


def interleaved(steps: int, plain, regularized) -> tuple[float, float]:
    """Median seconds of ``plain()`` and ``regularized()``, run alternately after a warm-up."""
    plain(), regularized()
    times = {plain: [], regularized: []}
    for _ in range(steps):
        for fn in (plain, regularized):
            begin = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - begin)
    return statistics.median(times[plain]), statistics.median(times[regularized])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model)
    start = time.perf_counter()
    reg = FlopsRegularizer(model, torch.zeros(1, 3, 224, 224))
    t_build = time.perf_counter() - start
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, 224, 224)
    y = torch.randint(0, 1000, (args.batch,))

    def make_step(forward, reg_loss):
        def step():
            loss = F.cross_entropy(forward(x), y)
            if reg_loss is not None:
                loss = loss + STRENGTH * reg_loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    print(f"{args.model}, batch {args.batch}, CPU {torch.get_num_threads()} threads, "
          f"median of {args.steps} interleaved steps")
    print(f"  regularizer built once (capture + compile): {t_build:.2f} s")
    loss_only = []
    for _ in range(20):
        begin = time.perf_counter()
        reg.loss().backward()
        loss_only.append(time.perf_counter() - begin)
    optimizer.zero_grad()
    p, r = interleaved(args.steps, make_step(model, None), make_step(model, reg.loss))
    print(f"  eager:    plain {p:.3f} s, regularized {r:.3f} s: overhead {(r / p - 1) * 100:+.1f}%; "
          f"loss() + backward alone {statistics.median(loss_only) * 1e3:.2f} ms")
    if args.no_compile:
        return
    begin = time.perf_counter()
    compiled_model = torch.compile(model)
    compiled_loss = torch.compile(reg.loss, fullgraph=True)
    make_step(compiled_model, compiled_loss)()
    print(f"  compile (first step, inductor): {time.perf_counter() - begin:.0f} s")
    p, r = interleaved(args.steps, make_step(compiled_model, None), make_step(compiled_model, compiled_loss))
    print(f"  compiled: plain {p:.3f} s, regularized {r:.3f} s: overhead {(r / p - 1) * 100:+.1f}%")


if __name__ == "__main__":
    main()
