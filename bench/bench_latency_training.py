"""Latency-regularized against FLOP-regularized training on Fashion-MNIST, both measured on this CPU.

1. Profiles this CPU (``morphscope.profile``: one thread, batch 1), or reads ``--profile FILE``.
2. Trains the Fashion-MNIST CNN of ``bench_strength_target.py`` steered to each of
   ``--targets`` x the seed's FLOPs (``FlopsRegularizer``) and x the seed's latency predicted
   by that profile (``LatencyRegularizer(hardware=profile)``), in ``--jobs`` processes.
3. Rebuilds each learned (alive) structure and times it against the seed
   (``morphscope.measure``: one thread, batch 1, median of 50 calls after warm-up), with its
   FLOPs, parameters, predicted latency and the test accuracy of the regularized network.

Prints one table, and for each latency run the FLOP runs' measured latency at its FLOPs and at
its accuracy (linear interpolation between FLOP runs). Timing runs after all training, alone.
Each run leaves ``<out>/<resource>_<target>/`` (StructureLogger files, ``result.json`` and the
final ``weights.pt``); ``--measure-only`` times those again without training.

    python bench/bench_latency_training.py [--targets 0.3 0.5 0.7] [--epochs 2] [--jobs 3]
        [--profile FILE.json] [--out FOLDER] [--measure-only]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path

import numpy as np
import torch

import morphscope
from bench_strength_target import SeedCNN, load, run
from morphscope.analyzers.hardware import load_profile


def train_one(job: tuple[str, float, int, str, str]) -> None:
    resource, target, epochs, profile_path, out = job
    torch.set_num_threads(1)
    train, test = load("train"), load("test")
    hardware = load_profile(profile_path) if resource == "latency" else "V100"
    result, model, _ = run(target, epochs, train, test, Path(out), resource, hardware)
    folder = Path(out) / f"{resource}_{target}"
    torch.save(model.state_dict(), folder / "weights.pt")
    (folder / "result.json").write_text(json.dumps(result))


def _between(value: float, runs: list[dict], key: str) -> str:
    """The runs' measured latency at ``value`` of ``key``, interpolated linearly, or why not."""
    ordered = sorted(runs, key=lambda r: r[key])
    low, high = ordered[0][key], ordered[-1][key]
    if not low <= value <= high:
        return f"not comparable ({key} {value:,.4g} outside the FLOP runs' {low:,.4g} to {high:,.4g})"
    measured = np.interp(value, [r[key] for r in ordered], [r["measured_s"] for r in ordered])
    return f"{1e6 * measured:.1f} us (interpolated)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="a profile JSON (default: profile this CPU now)")
    parser.add_argument("--out", type=Path, default=Path("latency_training"))
    parser.add_argument("--measure-only", action="store_true", help="time the runs already in --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    profile_path = args.profile or args.out / "cpu_profile.json"
    if args.profile is None and not args.measure_only:
        print("profiling this CPU (1 thread, batch 1) ...", flush=True)
        morphscope.profile("this-cpu", batch=1, threads=1, out=profile_path)
    profile = load_profile(profile_path)
    folders = [args.out / f"{resource}_{t}" for resource in ("flops", "latency") for t in args.targets]
    if not args.measure_only:
        jobs = [(resource, t, args.epochs, str(profile_path), str(args.out))
                for resource in ("flops", "latency") for t in args.targets]
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            pool.map(train_one, jobs)
    torch.set_num_threads(1)
    example = torch.zeros(1, 1, 28, 28)
    rows = []
    for folder in folders:
        result = json.loads((folder / "result.json").read_text())
        structure = torch.load(folder / "weights.pt", weights_only=True)
        timed = morphscope.measure(SeedCNN(), structure, batch=1, threads=1, runs=50, hardware=profile,
                                   example_input=example)
        report = morphscope.report(SeedCNN(), structure, example_input=example)["morphed"][0]
        rows.append({**result, "flops": report["flops"], "params": report["params"],
                     "predicted_s": timed["morphed"]["predicted_s"], "measured_s": timed["morphed"]["measured_s"],
                     "seed_measured_s": timed["seed"]["measured_s"], "speedup": timed["speedup_measured"]})
    print(f"\n{'run':<14}{'FLOPs':>12}{'params':>9}{'predicted':>11}{'measured':>11}{'speedup':>9}{'accuracy':>10}")
    for r in rows:
        print(f"{r['resource'] + ' ' + str(r['target']):<14}{r['flops']:>12,.0f}{r['params']:>9,}"
              f"{1e6 * r['predicted_s']:>9.1f}us{1e6 * r['measured_s']:>9.1f}us{r['speedup']:>8.2f}x"
              f"{r['test_accuracy']:>10.4f}")
    flop_runs = sorted((r for r in rows if r["resource"] == "flops"), key=lambda r: r["flops"])
    for r in (r for r in rows if r["resource"] == "latency"):
        print(f"latency {r['target']}: measured {1e6 * r['measured_s']:.1f} us; FLOP runs at its FLOPs "
              f"{_between(r['flops'], flop_runs, 'flops')}, at its accuracy "
              f"{_between(r['test_accuracy'], flop_runs, 'test_accuracy')}")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
