"""Loading a long training run: a 1,000-step StructureLogger run on resnet50, zipped.

Times what the explorer does when the run is uploaded (aim: under 2 s): unzip and check the
archive, parse 1,000 alive files and the cost log, match every step's op names to the graph,
widths per step, every layer's share of the seed's width at every step, costs at every step;
then drawing it (figures thinned to 400 steps). The graph is imported once beforehand, as the
app caches it.

    python bench/bench_runs.py [--steps 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings
import zipfile

import numpy as np

from morphscope.analyzers.morph import source_op_widths
from morphscope.analyzers.runs import costs_per_step, layer_shares, thin_indices, widths_per_step
from morphscope.analyzers.widths import compile_width_model
from morphscope.explorer import figures
from morphscope.importers.runs import match_run, runs_from_uploads
from morphscope.importers.torch_importer import load_torchvision


def make_run_zip(seed_widths: dict[str, int], steps: int) -> bytes:
    """A run whose layers shrink at random rates, logged at every step, zipped."""
    rng = np.random.default_rng(0)
    rates = {n: rng.uniform(0.0, 0.8) for n in seed_widths}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        log = []
        for step in range(steps):
            done = step / max(steps - 1, 1)
            counts = {f"{n}/Conv2D": max(1, int(w * (1 - rates[n] * done))) for n, w in seed_widths.items()}
            archive.writestr(f"run/alive_{step}", json.dumps(counts, indent=2, sort_keys=True))
            log.append(json.dumps({"step": step, "target": "flops", "cost": 1e9 * (1 - done / 2), "loss": 1.0,
                                   "val_accuracy": 0.5 + done / 3}))
        archive.writestr("run/cost.jsonl", "\n".join(log) + "\n")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    graph = load_torchvision("resnet50")
    model = compile_width_model(graph)
    seed = {n: w for n, w in source_op_widths(graph, model, model.seed_widths).items() if n != "fc"}
    data = make_run_zip(seed, args.steps)
    print(f"resnet50, {len(graph)} ops; run of {args.steps} steps x {len(seed)} layers, zip {len(data) / 1e6:.1f} MB")
    stages: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        [run] = runs_from_uploads([("run.zip", data)])
        t1 = time.perf_counter()
        counts = match_run(graph, run)
        t2 = time.perf_counter()
        widths = widths_per_step(model, counts)
        shares = layer_shares(graph, model, widths)
        costs = costs_per_step(model, widths)
        t3 = time.perf_counter()
        drawn = thin_indices(len(run.steps), 400)
        steps = np.asarray(run.steps)
        figures.run_costs({"run": {"steps": steps[drawn], "share": costs["flops"][drawn] / costs["flops"][0],
                                   "target": "flops", "selected_share": 0.5}}, {"run": int(steps[-1])}).to_json()
        figures.run_heatmap("run", steps[drawn], shares["layers"], shares["shares"][:, drawn], int(steps[-1])).to_json()
        t4 = time.perf_counter()
        for name, seconds in (("unzip + parse", t1 - t0), ("match names", t2 - t1),
                              ("widths, shares, costs", t3 - t2), ("figures (JSON)", t4 - t3),
                              ("total", t4 - t0)):
            stages.setdefault(name, []).append(seconds)
    for name, times in stages.items():
        print(f"{name:<24} {min(times):7.3f} s (best of {args.repeat})")


if __name__ == "__main__":
    main()
