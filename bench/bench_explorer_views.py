"""Slider to figures with the new views, on resnet50 with two structures and a 1,000-step run.

Times what the explorer reruns when the width-multiplier slider or a run's step selector
moves: the structures' views, the width bars with their resolution row and per-layer hover
tables, channels kept per resolution, the on-screen per-layer table, the run's cost line and
heatmap (thinned), the trade-off curves and the metrics rows; each figure serialized to JSON as
Streamlit does (aim: under 100 ms). Parsing and the run's per-step analysis are cached by the
app and done once here.

    python bench/bench_explorer_views.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runs import make_run_zip  # noqa: E402  (the same synthetic 1,000-step run)
from bench_slider import resnet50_with_two_structures  # noqa: E402  (the same two structures)

from morphscope.analyzers import compare  # noqa: E402
from morphscope.analyzers.morph import source_op_widths  # noqa: E402
from morphscope.analyzers.resolution import kept_by_resolution, layer_resolutions  # noqa: E402
from morphscope.analyzers.runs import costs_per_step, layer_shares, thin_indices, widths_per_step  # noqa: E402
from morphscope.explorer import figures  # noqa: E402
from morphscope.exporters.writers import layer_table  # noqa: E402
from morphscope.importers.runs import match_run, runs_from_uploads  # noqa: E402

FACTORS = np.round(np.linspace(0.25, 3.0, 111), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    graph, model, hw, structures, _ = resnet50_with_two_structures()
    seed_ops = {n: w for n, w in source_op_widths(graph, model, model.seed_widths).items() if n != "fc"}
    [run] = runs_from_uploads([("run.zip", make_run_zip(seed_ops, 1000))])
    counts = match_run(graph, run)
    run_widths = widths_per_step(model, counts)  # cached by the app
    shares = layer_shares(graph, model, run_widths)
    run_costs = costs_per_step(model, run_widths, hw)
    seed = model.totals(model.seed_widths, hw)
    drawn = thin_indices(len(run.steps), 400)
    steps = np.asarray(run.steps)

    def move(factor: float, step_index: int) -> list[str]:
        chosen = {**structures, f"run @ {step_index}": run_widths[step_index]}
        views = [compare.view_structure(model, label, alive, factor, hw) for label, alive in chosen.items()]
        rows = compare.metrics_rows(seed, views)
        bars = compare.layer_widths(graph, model, views)
        tables = {v.label: layer_table(graph, model, v.alive, v.expanded) for v in views}
        kept = kept_by_resolution(graph, model, {v.label: v.alive for v in views})
        curves = compare.tradeoff_curves(model, views, FACTORS, hw)
        matched = {v.label: compare.matching_factor(model, v.alive, "flops", hw) for v in views}
        current = {"seed": factor, **{v.label: factor for v in views}}
        share = run_costs["flops"] / seed["flops"]
        figs = [figures.width_bars(bars, layer_resolutions(graph, bars["layers"]), tables),
                figures.kept_by_resolution(kept),
                figures.tradeoff_figure(curves, FACTORS, current, matched, "params"),
                figures.tradeoff_figure(curves, FACTORS, current, matched, "latency_s"),
                figures.run_costs({"run": {"steps": steps[drawn], "share": share[drawn], "target": "flops",
                                           "selected_share": float(share[step_index])}}, {"run": int(steps[step_index])}),
                figures.run_heatmap("run", steps[drawn], shares["layers"], shares["shares"][:, drawn],
                                    int(steps[step_index]))]
        return [f.to_json() for f in figs] + [str(rows), str(tables)]

    move(1.0, 999)  # warm up
    times = []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        move(0.9 + 0.01 * i, (37 * i) % 1000)
        times.append(time.perf_counter() - t0)
    print(f"resnet50 ({len(graph)} ops), 2 checkpoints + a 1,000-step run's selected step: slider move to "
          f"figures median {1e3 * statistics.median(times):.1f} ms, best {1e3 * min(times):.1f} ms "
          f"({args.repeat} moves)")


if __name__ == "__main__":
    main()
