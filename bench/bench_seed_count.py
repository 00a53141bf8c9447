"""Seed counting speed against the peers, in one process, on the same CPU models.

For each model: our import (one forward pass recorded under a dispatch mode on meta stand-ins
of the weights -> ChannelGraph) + seed count, our count alone (cost rules compiled and summed on
the imported graph), and the MAC counts of fvcore, thop, ptflops and torch's FlopCounterMode,
each on the same random-weight CPU model. Prints the best-of-N seconds, the ratio to ours and
the MACs each tool reports (their conventions differ: see README, "Conventions"), then per
model ours (import + count) over the fastest peer: at or under 1.0 is the aim.

    python bench/bench_seed_count.py [--repeat 3] [--models resnet50 mobilenet_v2 ...]
"""

from __future__ import annotations

import argparse
import copy
import io
import contextlib
import os
import time
import warnings

import torch
import torchvision

from morphscope.analyzers.cost import compile_costs, seed_costs, totals_of
from morphscope.importers.torch_importer import load_module, torchvision_input_size

MODELS = ["resnet50", "mobilenet_v2", "inception_v3", "efficientnet_b0"]


def best_of(repeat, fn):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def ours_import_and_count(model, shape):
    graph = load_module(model, shape)
    costs = compile_costs(graph)
    return totals_of(costs, seed_costs(costs))["macs"], graph


def ours_count(graph):
    costs = compile_costs(graph)
    return totals_of(costs, seed_costs(costs))["macs"]


def fvcore_macs(model, x):
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(analysis.total())  # fvcore's "flops" are MACs


def thop_macs(model, x):
    from thop import profile

    with contextlib.redirect_stdout(io.StringIO()):
        macs, _ = profile(copy.deepcopy(model), inputs=(x,), verbose=False)
    return int(macs)


def ptflops_macs(model, shape):
    from ptflops import get_model_complexity_info

    with contextlib.redirect_stdout(io.StringIO()):
        macs, _ = get_model_complexity_info(model, shape, as_strings=False,
                                            print_per_layer_stat=False, verbose=False)
    return int(macs)


def flop_counter_macs(model, x):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"best of {args.repeat}, CPU, batch 1, load average {load} on {os.cpu_count()} cores")
    header = f"{'model':<16} {'tool':<26} {'seconds':>9} {'x ours(import+count)':>21} {'x ours(count)':>14} {'MACs':>15}"
    print(header)
    print("-" * len(header))
    summary = []
    for name in args.models:
        model = torchvision.models.get_model(name, weights=None).eval()
        side = torchvision_input_size(model, name)
        shape = (3, side, side)
        x = torch.randn(1, *shape)
        t_import, (macs, graph) = best_of(args.repeat, lambda: ours_import_and_count(model, shape))
        t_count, _ = best_of(args.repeat, lambda: ours_count(graph))
        rows = [("morphscope import+count", t_import, macs), ("morphscope count only", t_count, macs)]
        for tool, fn in (("fvcore", lambda: fvcore_macs(model, x)),
                         ("thop", lambda: thop_macs(model, x)),
                         ("ptflops", lambda: ptflops_macs(model, shape)),
                         ("FlopCounterMode", lambda: flop_counter_macs(model, x))):
            with torch.no_grad():
                seconds, peer_macs = best_of(args.repeat, fn)
            rows.append((tool, seconds, peer_macs))
        for tool, seconds, tool_macs in rows:
            print(f"{name:<16} {tool:<26} {seconds:>9.4f} {seconds / t_import:>21.2f} "
                  f"{seconds / t_count:>14.1f} {tool_macs:>15,}")
        fastest_tool, fastest, _ = min(rows[2:], key=lambda row: row[1])
        summary.append(f"{name:<16} ours {t_import:.4f} s / {fastest_tool} {fastest:.4f} s "
                       f"= {t_import / fastest:.2f}")
        print()
    print("import + count against the fastest peer:")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
