"""The paper's comparison on the digits example: accuracy against FLOPs.

MorphNet (Gordon et al. 2018, Figure 3/4) compares two ways of spending a FLOP budget: the seed
network under a uniform width multiplier, and the structure the FLOP regularizer learned,
expanded by a uniform multiplier to the same FLOPs. This script retrains both, from scratch, at
several budgets and with several random seeds, on the harder digits task of
``train_digits.py`` (400 training images, noisy pixels, about 1,000 held-out test images), and
writes ``width_sweep.json`` (the explorer draws it).

    python examples/width_sweep_digits.py [--out digits_run] [--epochs 20] [--workers 2]

It reads the FLOP-regularized gammas ``train_digits.py`` wrote (``flops_gammas.pt``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_digits as td  # noqa: E402  (the example's network, data and training loop)

from morphscope.analyzers.alive import DEFAULT_THRESHOLD  # noqa: E402
from morphscope.analyzers.morph import Morphed, export_plan, morph, plan_totals  # noqa: E402
from morphscope.analyzers.widths import apply_multiplier, compile_width_model, solve_multiplier  # noqa: E402
from morphscope.exporters import rebuild  # noqa: E402
from morphscope.importers.checkpoints import load_structure  # noqa: E402
from morphscope.importers.torch_importer import load_module  # noqa: E402

FACTORS = (0.35, 0.5, 0.7, 1.0)  # seed width multipliers, each a FLOP budget (about f^2 x seed)
SEEDS = (0, 1, 2)
FAMILIES = ("seed", "morphnet")


def _plan(family: str, factor: float, gammas_path: Path):
    """Graph, width model and export plan of one family at the FLOP budget of seed x ``factor``."""
    graph = load_module(td.SeedNet(), (1, td.SIDE, td.SIDE), name="SeedNet")
    model = compile_width_model(graph)
    budget = model.totals(apply_multiplier(model.spaces, model.seed_widths, factor))["flops"]
    if family == "seed":
        return graph, model, export_plan(graph, model, Morphed("seed", model.seed_widths, None), factor), factor
    structure = load_structure(graph, gammas_path)
    learned = morph(model, structure, DEFAULT_THRESHOLD)
    multiplier = solve_multiplier(model, learned.widths, "flops", budget)
    plan = export_plan(graph, model, learned, multiplier, structure.gammas, DEFAULT_THRESHOLD)
    return graph, model, plan, multiplier


def train_point(family: str, factor: float, seed: int, epochs: int, gammas_path: Path) -> dict:
    """Rebuild one structure at one budget, train it from scratch with ``seed``; test accuracy."""
    torch.set_num_threads(1)
    graph, model, plan, multiplier = _plan(family, factor, gammas_path)
    torch.manual_seed(100 + seed)
    net = rebuild.rebuild_torch(td.SeedNet(), graph, model, plan)
    for module in net.modules():  # from scratch: fresh weights, not the seed's
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    accuracy = td.train(net, td.load_digits_tensors(), epochs, seed=seed)
    totals = plan_totals(model, plan)
    return {"family": family, "factor": factor, "multiplier": round(multiplier, 4), "seed": seed,
            "flops": int(totals["flops"]), "params": int(totals["params"]), "accuracy": accuracy}


def summarize(runs: list[dict]) -> list[dict]:
    """One point per family and budget: FLOPs, params, accuracies, their mean and spread."""
    points = []
    for family in FAMILIES:
        for factor in FACTORS:
            chosen = [r for r in runs if r["family"] == family and r["factor"] == factor]
            accuracies = [r["accuracy"] for r in sorted(chosen, key=lambda r: r["seed"])]
            points.append({"family": family, "factor": factor, "multiplier": chosen[0]["multiplier"],
                           "flops": chosen[0]["flops"], "params": chosen[0]["params"],
                           "accuracies": accuracies, "mean": float(np.mean(accuracies)),
                           "std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="digits_run", help="output folder (default digits_run; "
                        "examples/digits replaces the bundled example)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="processes, one CPU thread each")
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    args = parser.parse_args()
    out = Path(args.out)
    gammas_path = out / "flops_gammas.pt"
    started = time.time()
    jobs = [(family, factor, seed) for factor in reversed(FACTORS) for family in FAMILIES
            for seed in SEEDS[:args.seeds]]  # biggest first: the pool ends on short jobs
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_point, *job, args.epochs, gammas_path) for job in jobs]
        runs = [f.result() for f in futures]
    seconds = time.time() - started
    doc = {"task": (f"digits, {td.TRAIN_SIZE} training images, {td.VAL_SIZE} validation, the rest "
                    f"(about 1,000) for test; Gaussian pixel noise std {td.NOISE}; 16x16 input"),
           "structure": "FLOP-regularized (flops_gammas.pt), expanded to each budget",
           "epochs": args.epochs, "seconds": round(seconds), "workers": args.workers,
           "points": summarize(runs), "runs": runs}
    (out / "width_sweep.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'family':<9} {'factor':>6} {'FLOPs':>11} {'params':>9}  accuracy (mean +- std)")
    for p in doc["points"]:
        print(f"{p['family']:<9} {p['factor']:>6} {p['flops']:>11,} {p['params']:>9,}  "
              f"{p['mean']:.3f} +- {p['std']:.3f}")
    print(f"\n{seconds:.0f} s in {args.workers} processes of one CPU thread; wrote {out / 'width_sweep.json'}")


if __name__ == "__main__":
    main()
