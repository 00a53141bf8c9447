"""Slider latency: from a width-multiplier change to rebuilt figures, on resnet50.

Times what the explorer reruns when the slider moves (analysis + plotly figure building, no
network, no browser): expanded widths and totals per structure, the metrics rows, the
layer-width bars, both trade-off charts, the |gamma| histogram and the
group and topology reports. The graph and checkpoints are parsed once, as the
app caches them. Also counts graph traversals per slider move: calls of ``ChannelGraph.ops``
/ ``of_kind`` and of networkx's sorts and ancestor searches (target: 0).

    python bench/bench_slider.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import networkx as nx
import numpy as np

from morphscope import graph as graph_module
from morphscope.analyzers import compare
from morphscope.analyzers.alive import consistency_report, topology_report
from morphscope.analyzers.hardware import get_hardware
from morphscope.analyzers.widths import compile_width_model
from morphscope.explorer import figures
from morphscope.importers.torch_importer import load_torchvision

FACTORS = np.round(np.linspace(0.25, 3.0, 111), 4)
WALKS = [(graph_module.ChannelGraph, "ops"), (graph_module.ChannelGraph, "of_kind"),
         (graph_module, "_topological_order"),
         *((nx, f) for f in ("topological_sort", "lexicographical_topological_sort", "ancestors",
                             "descendants", "dfs_preorder_nodes", "bfs_edges"))]


def count_traversals() -> dict[str, int]:
    """Wrap every graph-walking function; the returned dict counts their calls."""
    counts: dict[str, int] = {}
    for owner, attr in WALKS:
        original = getattr(owner, attr, None)
        if original is None:
            continue

        def counted(*args, _original=original, _name=attr, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _original(*args, **kwargs)

        setattr(owner, attr, counted)
    return counts


def resnet50_with_two_structures():
    """resnet50, compiled, and two random structures (about 40% of channels dead), as
    ``(graph, model, hardware, {label: alive widths}, {label: gammas})``; shared by the
    explorer benches."""
    graph = load_torchvision("resnet50")
    model = compile_width_model(graph)
    rng = np.random.default_rng(0)
    structures, all_gammas = {}, {}
    for label in ("FLOPs", "size"):
        gammas = {n: rng.uniform(0, 1, a["out_channels"]) * (rng.random(a["out_channels"]) > 0.4)
                  for n, a in graph.ops() if a.get("gamma_key")}
        all_gammas[label] = gammas
        structures[label] = compare.structure_widths(model, gammas, None, 1e-2)
    return graph, model, get_hardware("V100"), structures, all_gammas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    graph, model, hw, structures, all_gammas = resnet50_with_two_structures()
    seed = model.totals(model.seed_widths, hw)

    def analyze(factor: float) -> dict:
        """Everything the page computes for one slider position (plain data)."""
        views = [compare.view_structure(model, label, alive, factor, hw) for label, alive in structures.items()]
        curves = compare.tradeoff_curves(model, views, FACTORS, hw)
        return {
            "views": views,
            "rows": compare.metrics_rows(seed, views),
            "bars": compare.layer_widths(graph, model, views),
            "curves": curves,
            "matched": {v.label: compare.matching_factor(model, v.alive, "flops", hw) for v in views},
            "current": {"seed": factor, **{v.label: factor for v in views}},
            "magnitudes": {k: compare.gamma_magnitudes(g) for k, g in all_gammas.items()},
            # The rest of the page reruns too: group and topology reports.
            "reports": [(topology_report(graph, model.spaces, structures[label], gammas),
                         consistency_report(model.spaces, gammas))
                        for label, gammas in all_gammas.items()],
        }

    def draw(data: dict) -> None:
        """The plotly figures built from it."""
        figures.width_bars(data["bars"])
        for y in ("params", "latency_s"):
            figures.tradeoff_figure(data["curves"], FACTORS, data["current"], data["matched"], y)
        figures.gamma_histogram(data["magnitudes"], 1e-2)

    draw(analyze(1.0))  # warm up plotly's validators
    analysis, drawing = [], []
    for factor in np.linspace(0.8, 1.6, args.repeat):
        start = time.perf_counter()
        data = analyze(float(factor))
        middle = time.perf_counter()
        draw(data)
        analysis.append(middle - start)
        drawing.append(time.perf_counter() - middle)
    moved = []  # the part that depends on the slider's factor (the rest could be cached)
    for factor in np.linspace(0.8, 1.6, args.repeat):
        start = time.perf_counter()
        views = [compare.view_structure(model, label, alive, float(factor), hw) for label, alive in structures.items()]
        compare.metrics_rows(seed, views)
        compare.layer_widths(graph, model, views)
        moved.append(time.perf_counter() - start)
    counts = count_traversals()
    draw(analyze(1.3))
    total = [a + d for a, d in zip(analysis, drawing)]
    print(f"resnet50 ({len(model.costs.names)} ops, {model.spaces.n_spaces} spaces), 2 structures, "
          f"{args.repeat} slider moves (medians)")
    print(f"  slider change -> recomputed figures: {statistics.median(total) * 1e3:.1f} ms "
          f"(max {max(total) * 1e3:.1f} ms; target: under 50 ms)")
    print(f"    analysis (widths, totals, curves, solves, reports): {statistics.median(analysis) * 1e3:.1f} ms")
    print(f"      of which depends on the factor (views, table, bars): {statistics.median(moved) * 1e3:.1f} ms")
    print(f"    plotly figure building:                              {statistics.median(drawing) * 1e3:.1f} ms")
    print(f"  graph traversals per slider move: {sum(counts.values())} {counts or ''}(target: 0)")


if __name__ == "__main__":
    main()
