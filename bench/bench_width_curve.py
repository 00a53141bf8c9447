"""Width-multiplier curve and threshold sweep on resnet50: ours against rebuild + fvcore.

Ours: the graph is compiled once; a 100-point curve is one vectorized evaluation, and a
100-point threshold sweep recomputes alive masks and costs per threshold without walking
the graph. The peer way: rebuild the model at each width (module surgery, as a user without
a cost model would) and count it with fvcore. Prints seconds and the ratio.

    python bench/bench_width_curve.py [--points 100] [--peer-points 5]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torchvision

from morphscope.analyzers.alive import alive_masks, alive_widths, group_scores
from morphscope.analyzers.morph import Morphed, export_plan
from morphscope.analyzers.widths import apply_multiplier, compile_width_model, multiplier_curve
from morphscope.exporters import rebuild
from morphscope.importers.torch_importer import load_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--peer-points", type=int, default=5,
                        help="widths the peer is timed at (its per-point time is extrapolated)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    from fvcore.nn import FlopCountAnalysis

    module = torchvision.models.resnet50().eval()
    start = time.perf_counter()
    graph = load_module(module, (3, 224, 224), name="resnet50")
    model = compile_width_model(graph)
    t_compile = time.perf_counter() - start

    factors = np.linspace(0.25, 2.0, args.points)
    start = time.perf_counter()
    curve = multiplier_curve(model, model.seed_widths, factors)
    t_curve = time.perf_counter() - start

    rng = np.random.default_rng(0)
    gammas = {n: np.abs(rng.normal(0, 0.3, a["out_channels"])) for n, a in graph.ops() if a.get("gamma_key")}
    scores = group_scores(model.spaces, gammas)
    thresholds = np.geomspace(1e-4, 0.5, args.points)
    start = time.perf_counter()
    sweep = [model.totals(alive_widths(alive_masks(model.spaces, scores, t)))["flops"] for t in thresholds]
    t_sweep = time.perf_counter() - start

    peer_factors = np.linspace(0.25, 2.0, args.peer_points)
    x = torch.zeros(1, 3, 224, 224)
    start = time.perf_counter()
    for f in peer_factors:
        widths = apply_multiplier(model.spaces, model.seed_widths, f)
        plan = export_plan(graph, model, Morphed("uniform", widths, None))
        resized = rebuild.rebuild_torch(module, graph, model, plan)
        analysis = FlopCountAnalysis(resized, x)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.total()
    t_peer_point = (time.perf_counter() - start) / args.peer_points

    ours_check = model.totals(apply_multiplier(model.spaces, model.seed_widths, 1.0))["macs"]
    print(f"resnet50, {args.points}-point curves, CPU, {torch.get_num_threads()} threads")
    print(f"  compile once (torch.export + spaces + arrays): {t_compile:8.3f} s")
    print(f"  width-multiplier curve, ours:                 {t_curve * 1e3:8.2f} ms "
          f"({t_curve / args.points * 1e6:.1f} us/point)")
    print(f"  threshold sweep, ours:                        {t_sweep * 1e3:8.2f} ms "
          f"({t_sweep / args.points * 1e3:.2f} ms/point)")
    print(f"  rebuild + fvcore, per width:                  {t_peer_point:8.3f} s")
    peer_curve = t_peer_point * args.points
    print(f"  rebuild + fvcore, {args.points} points (extrapolated):   {peer_curve:8.1f} s")
    print(f"  ratio, curve:           peer / ours = {peer_curve / t_curve:,.0f}x")
    print(f"  ratio, curve+compile:   peer / ours = {peer_curve / (t_curve + t_compile):,.0f}x")
    print(f"  ratio, threshold sweep: peer / ours = {peer_curve / t_sweep:,.0f}x")
    print(f"  sanity: seed MACs {ours_check:,}; curve FLOPs at 1.0 = "
          f"{int(np.interp(1.0, factors, curve['flops'])):,} (interpolated); sweep spans "
          f"{min(sweep):,} .. {max(sweep):,} FLOPs")


if __name__ == "__main__":
    main()
