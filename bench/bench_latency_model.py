"""Predicted against measured latency: a profile fitted on this machine vs the V100 roofline.

For each thread count and batch size: fits a latency profile on this machine
(``morphscope profile``: every op class timed over a sweep of widths and resolutions), then
rebuilds morphed variants of torchvision resnet18, mobilenet_v2 and efficientnet_b0 (random
weights; per model: the seed, uniform multipliers 0.5 and 0.75, random bn scales at 20/40/60%
dead with and without widths rounded to multiples of 8, and 40% dead expanded x0.75) and
times each forward pass (median after warm-up). Prints, per configuration, the mean absolute
percentage error (MAPE) and Spearman's rank correlation of each predictor over the variants.
``--framework keras`` does the same for keras.applications' MobileNetV2 with a profile timed
in Keras (a ``tf.function`` forward pass), at one thread count per process.

    python bench/bench_latency_model.py [--threads 1 2] [--batch 1 16] [--out results.json]
    python bench/bench_latency_model.py --framework keras --threads 1 [--batch 1 16]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torchvision

from morphscope.analyzers.hardware import get_hardware, profile_from_doc
from morphscope.analyzers.morph import Morphed, export_plan, morph, plan_totals
from morphscope.analyzers.widths import compile_width_model
from morphscope.exporters.export import rebuild_model
from morphscope.exporters.keras_timing import measure_keras
from morphscope.exporters.timing import mape, measure_model, profile_device, spearman
from morphscope.importers.checkpoints import LearnedStructure
from morphscope.importers.torch_importer import load_module

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0")
KERAS_MODELS = ("MobileNetV2",)
# (label, dead fraction of random bn scales or None, multiplier, round_to)
VARIANTS = (("seed", None, None, 1), ("x0.5", None, 0.5, 1), ("x0.75", None, 0.75, 1),
            ("dead20", 0.2, None, 1), ("dead40", 0.4, None, 1), ("dead60", 0.6, None, 1),
            ("dead20 r8", 0.2, None, 8), ("dead40 r8", 0.4, None, 8), ("dead60 r8", 0.6, None, 8),
            ("dead40 x0.75", 0.4, 0.75, 1))


def _gammas(graph, seed: int, dead: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(0.05, 1, a["out_channels"]) * (rng.random(a["out_channels"]) > dead)
            for n, a in graph.ops() if a.get("gamma_key")}


def variants(name: str):
    """(label, rebuilt module, width model, plan) of every variant of one model."""
    module = torchvision.models.get_model(name, weights=None).eval()
    graph = load_module(module, (3, 224, 224), name=name)
    model = compile_width_model(graph)
    for i, (label, dead, multiplier, round_to) in enumerate(VARIANTS):
        if dead is None:
            morphed, gammas = Morphed(label, model.seed_widths, None), None
        else:
            gammas = _gammas(graph, i, dead)
            morphed = morph(model, LearnedStructure(label, gammas=gammas))
        plan = export_plan(graph, model, morphed, multiplier, gammas, round_to=round_to)
        yield label, rebuild_model(module, graph, model, plan), model, plan


def keras_variants(name: str):
    """:func:`variants` of a Keras application (random weights, built from its config)."""
    import keras

    from morphscope.importers.keras_importer import load_keras_model

    seed = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    graph = load_keras_model(seed)
    model = compile_width_model(graph)
    for i, (label, dead, multiplier, round_to) in enumerate(VARIANTS):
        gammas = None if dead is None else _gammas(graph, i, dead)
        morphed = Morphed(label, model.seed_widths, None) if dead is None else morph(model, LearnedStructure(label, gammas=gammas))
        plan = export_plan(graph, model, morphed, multiplier, gammas, round_to=round_to)
        yield label, rebuild_model(seed, graph, model, plan), model, plan


def run(threads: int, batch: int, runs: int, framework: str = "torch") -> dict:
    started = time.perf_counter()
    profile = profile_from_doc(profile_device(f"{framework}-cpu-{threads}t-b{batch}", batch, threads, runs=runs,
                                              framework=framework), "profile")
    print(f"\nthreads {threads}, batch {batch}: profile fitted in {time.perf_counter() - started:.0f} s "
          f"(fit MAPE {100 * profile.measured['mape']:.1f}% over {profile.measured['points']} op timings)", flush=True)
    v100 = get_hardware("V100")
    rows = []
    for name in MODELS if framework == "torch" else KERAS_MODELS:
        for label, module, model, plan in (variants if framework == "torch" else keras_variants)(name):
            timing = (measure_model(module, (3, 224, 224), batch, threads, runs=runs, warmup=3) if framework == "torch"
                      else measure_keras(module, (3, 224, 224), batch, runs=runs, warmup=3))
            rows.append({"model": name, "variant": label, "measured_s": timing.median_s,
                         "profile_s": plan_totals(model, plan, profile)["latency_s"],
                         "roofline_s": plan_totals(model, plan, v100)["latency_s"] * batch,
                         "flops": plan_totals(model, plan)["flops"]})
            print(f"  {name:<16} {label:<13} measured {1e3 * timing.median_s:8.2f} ms  profile "
                  f"{1e3 * rows[-1]['profile_s']:8.2f} ms  roofline {1e3 * rows[-1]['roofline_s']:7.3f} ms", flush=True)
    measured = np.array([r["measured_s"] for r in rows])
    summary = {}
    for predictor in ("profile_s", "roofline_s", "flops"):
        predicted = np.array([r[predictor] for r in rows], dtype=float)
        summary[predictor] = {"mape": mape(predicted, measured) if predictor != "flops" else None,
                              "spearman": spearman(predicted, measured)}
    print(f"  {len(rows)} variants: calibrated profile MAPE {100 * summary['profile_s']['mape']:.1f}%, "
          f"Spearman {summary['profile_s']['spearman']:.3f}; V100 roofline MAPE "
          f"{100 * summary['roofline_s']['mape']:.1f}%, Spearman {summary['roofline_s']['spearman']:.3f}; "
          f"FLOPs alone Spearman {summary['flops']['spearman']:.3f}", flush=True)
    return {"framework": framework, "threads": threads, "batch": batch, "rows": rows, "summary": summary,
            "profile_mape": profile.measured["mape"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--framework", choices=("torch", "keras"), default="torch",
                        help="keras: MobileNetV2 from keras.applications, one --threads value per process "
                        "(TensorFlow fixes its threads when it starts)")
    parser.add_argument("--out", help="write every timing and the summaries as JSON")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    if args.framework == "keras" and len(args.threads) > 1:
        parser.error("--framework keras takes one --threads value (run once per thread count)")
    if args.framework == "keras":
        from morphscope.exporters.keras_timing import set_keras_threads

        set_keras_threads(args.threads[0])  # before TensorFlow runs anything
    results = [run(t, b, args.runs, args.framework) for t in args.threads for b in args.batch]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
