"""Slider latency: from a width-multiplier change to rebuilt figures, on resnet50.

Times what the explorer reruns when the slider moves (analysis + plotly figure building, no
network, no browser): expanded widths and totals per structure, the metrics rows, the
layer-width bars, both trade-off charts, the |gamma| histogram and the
group and topology reports. The graph and checkpoints are parsed once, as the
app caches them.

    python bench/bench_slider.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

from morphscope.analyzers import compare
from morphscope.analyzers.alive import consistency_report, topology_report
from morphscope.analyzers.hardware import get_hardware
from morphscope.analyzers.widths import compile_width_model
from morphscope.explorer import figures
from morphscope.importers.torch_importer import load_torchvision

FACTORS = np.round(np.linspace(0.25, 3.0, 111), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    graph = load_torchvision("resnet50")
    model = compile_width_model(graph)
    hw = get_hardware("V100")
    rng = np.random.default_rng(0)
    structures, all_gammas = {}, {}
    for label in ("FLOPs", "size"):
        gammas = {n: rng.uniform(0, 1, a["out_channels"]) * (rng.random(a["out_channels"]) > 0.4)
                  for n, a in graph.ops() if a.get("gamma_key")}
        all_gammas[label] = gammas
        structures[label] = compare.structure_widths(model, gammas, None, 1e-2)
    seed = model.totals(model.seed_widths, hw)

    def on_slider(factor: float) -> None:
        views = [compare.view_structure(model, label, alive, factor, hw) for label, alive in structures.items()]
        compare.metrics_rows(seed, views)
        figures.width_bars(compare.layer_widths(graph, model, views))
        curves = compare.tradeoff_curves(model, views, FACTORS, hw)
        matched = {v.label: compare.matching_factor(model, v.alive, "flops", hw) for v in views}
        current = {"seed": factor, **{v.label: factor for v in views}}
        figures.tradeoff_figure(curves, FACTORS, current, matched, "params")
        figures.tradeoff_figure(curves, FACTORS, current, matched, "latency_s")
        # The rest of the page reruns too: histogram and group/topology reports.
        figures.gamma_histogram({k: compare.gamma_magnitudes(g) for k, g in all_gammas.items()}, 1e-2)
        for label, gammas in all_gammas.items():
            topology_report(graph, model.spaces, structures[label], gammas)
            consistency_report(model.spaces, gammas)

    on_slider(1.0)  # warm up plotly's validators
    times = []
    for factor in np.linspace(0.8, 1.6, args.repeat):
        start = time.perf_counter()
        on_slider(float(factor))
        times.append(time.perf_counter() - start)
    print(f"resnet50 ({len(model.costs.names)} ops, {model.spaces.n_spaces} spaces), 2 structures, "
          f"{args.repeat} slider moves")
    print(f"  slider change -> recomputed figures: median {statistics.median(times) * 1e3:.1f} ms, "
          f"max {max(times) * 1e3:.1f} ms (target: under 100 ms)")


if __name__ == "__main__":
    main()
