"""Large graphs: import + compile + cost time and peak memory of synthetic chains and residual
stacks of 1k, 10k and 100k ops, the fitted growth exponent, a 10^6-key checkpoint match,
and a 10^6-key ``.pt`` read and matched end to end (in process and isolated).

Each size runs in a fresh child process (so peak memory is its own): the graph is written as
a graph ``.json`` by this bench, then read back (import), compiled (channel spaces, cost
rules, sparse op x space matrices), costed (seed totals, a 111-point width curve) and
reported on (topology: residual branches, dead towers). ``--pt2`` also exports a chain of
ReLUs with torch.export and times the ``.pt2`` import (slow to export; sizes capped).
The ``.pt`` files are written once each (torch.save, in a process of their own) and read in
``--repeat`` fresh processes per measurement; the best is reported (the isolated read's
parser is started first, outside the timing).

    python bench/bench_large_graphs.py [--sizes 1000 10000 100000] [--pt2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np



def build(shape: str, n_ops: int):
    """A chain or residual stack of about ``n_ops`` ops (:func:`morphscope.analyzers.synthetic.conv_stack`,
    the builder the tests use too)."""
    from morphscope.analyzers.synthetic import conv_stack

    return conv_stack(shape, n_ops)


def run_one(path: Path) -> dict:
    """Import, compile and cost one graph file; times in seconds. ``load_model_cpu_s``: the
    CLI/app file path (:func:`~morphscope.importers.load.load_model`, declared-size checks,
    not isolated), timed separately after the rest."""
    from morphscope.analyzers.alive import topology_report
    from morphscope.analyzers.widths import compile_width_model, multiplier_curve
    from morphscope.graph import ChannelGraph
    from morphscope.importers.load import load_model

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    graph = ChannelGraph.from_json(path.read_text(), path.name)
    t1 = time.perf_counter()
    model = compile_width_model(graph)
    t2 = time.perf_counter()
    totals = model.totals(model.seed_widths)
    multiplier_curve(model, model.seed_widths, np.linspace(0.25, 3.0, 111))
    widths = model.seed_widths.copy()
    widths[1::7] = 0  # some dead spaces, so the topology report has work
    topology_report(graph, model.spaces, widths)
    t3, c3 = time.perf_counter(), time.process_time()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    c4 = time.process_time()
    load_model(str(path), isolate=False)
    c5 = time.process_time()
    return {"ops": len(graph), "load_model_cpu_s": c5 - c4, "peak_mb": peak_mb, "spaces": int(model.spaces.n_spaces),
            "import_s": t1 - t0, "compile_s": t2 - t1, "cost_s": t3 - t2, "total_s": t3 - t0,
            "cpu_s": c3 - c0,
            "peak_above_start_mb": peak_mb - base_rss / 1024, "macs": totals["macs"]}


def run_pt2(n_ops: int, path: Path) -> dict:
    """Export a chain of ``n_ops`` ReLUs to .pt2 and time MorphScope's import of it."""
    import torch

    from morphscope.importers.load import load_model

    class Chain(torch.nn.Module):
        def forward(self, x):
            for _ in range(n_ops):
                x = torch.relu(x)
            return x

    t0 = time.perf_counter()
    torch.export.save(torch.export.export(Chain(), (torch.zeros(1, 3, 8, 8),)), str(path))
    t1 = time.perf_counter()
    graph = load_model(str(path))
    t2 = time.perf_counter()
    return {"shape": "relu chain .pt2", "ops": len(graph), "export_s": t1 - t0, "import_s": t2 - t1,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_checkpoint(n_keys: int) -> dict:
    """Match a 10^6-key checkpoint (4 tensors per bn) against its graph's bn ops."""
    from morphscope.importers.checkpoints import match_gammas
    from morphscope.analyzers.synthetic import bn_chain, bn_chain_keys

    n_bn = n_keys // 4
    graph = bn_chain(n_bn)  # sorted once when built, as the CLI and app do when loading
    vector = np.ones(4, dtype=np.float32)
    tensors = dict.fromkeys(bn_chain_keys(n_bn), vector)
    t0, c0 = time.perf_counter(), time.process_time()
    structure = match_gammas(graph, tensors, "big.pt")
    t1, c1 = time.perf_counter(), time.process_time()
    return {"shape": "checkpoint", "keys": len(tensors), "matched": len(structure.gammas),
            "match_s": t1 - t0, "cpu_s": c1 - c0, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def write_checkpoint_file(n_keys: int, folder: Path) -> dict:
    """``torch.save`` a ``n_keys``-key state_dict (4 tensors of 4 values per bn, one storage
    each) as ``big.pt`` in ``folder``, and a 4-key one as ``warm.pt`` (starts the parser)."""
    import torch

    from morphscope.analyzers.synthetic import bn_chain_keys

    for n_bn, name in ((n_keys // 4, "big.pt"), (1, "warm.pt")):
        torch.save({key: torch.ones(4) for key in bn_chain_keys(n_bn)}, folder / name)
    return {}


def run_checkpoint_file(n_keys: int, folder: Path, isolate: bool) -> dict:
    """Time :func:`~morphscope.importers.checkpoints.load_structure` on ``folder/big.pt``
    (:func:`write_checkpoint_file`): the file read (in this process, or in the isolated worker,
    its parser already started) and the match, as the CLI and app do."""
    from morphscope.importers.checkpoints import load_structure
    from morphscope.importers.limits import Limits
    from morphscope.analyzers.synthetic import bn_chain

    n_bn = n_keys // 4
    graph = bn_chain(n_bn)
    roomy = Limits(max_cpu_s=600, max_wall_s=600, max_memory_bytes=8 * 2**30)  # measure, not refuse
    if isolate:
        load_structure(bn_chain(1), folder / "warm.pt", limits=roomy)
    t0, c0 = time.perf_counter(), time.process_time()
    structure = load_structure(graph, folder / "big.pt", isolate=isolate, limits=roomy)
    t1, c1 = time.perf_counter(), time.process_time()
    return {"keys": 4 * n_bn, "matched": len(structure.gammas), "wall_s": t1 - t0, "cpu_s": c1 - c0,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def best_of(runs: list[dict]) -> dict:
    """The run of least wall time, with the least CPU time and the wall times of all."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    best = min(good, key=lambda r: r["wall_s"])
    return {**best, "cpu_s": min(r["cpu_s"] for r in good), "walls": [r["wall_s"] for r in good]}


def child(args: list[str]) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is JSON."""
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1], "args": args}
    return json.loads(out.stdout.strip().splitlines()[-1])


def growth_exponent(sizes: list[int], seconds: list[float]) -> float:
    """Slope of log(time) against log(size): 1 is linear, 2 quadratic."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--pt2", action="store_true", help="also export and import .pt2 ReLU chains")
    parser.add_argument("--pt2-sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--checkpoint-keys", type=int, default=10 ** 6)
    parser.add_argument("--growth-keys", type=int, nargs="+", default=[10 ** 4, 10 ** 5, 10 ** 6],
                        help=".pt sizes read in process for the growth exponent (the last: --checkpoint-keys)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="fresh processes per .pt measurement; the best is reported (a loaded machine is noisy)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.checkpoint_keys not in args.growth_keys:
        args.growth_keys.append(args.checkpoint_keys)
    if args.child:
        what, *rest = args.child
        with tempfile.TemporaryDirectory() as tmp:
            if what == "write":  # its own process, so building the file is not in the peak
                Path(rest[2]).write_text(build(rest[0], int(rest[1])).to_json())
                result = {}
            elif what == "graph":
                result = run_one(Path(rest[0]))
            elif what == "pt2":
                result = run_pt2(int(rest[0]), Path(tmp) / "chain.pt2")
            elif what == "write-pt":
                result = write_checkpoint_file(int(rest[0]), Path(rest[1]))
            elif what == "file":
                result = run_checkpoint_file(int(rest[0]), Path(rest[2]), rest[1] == "isolated")
            else:
                result = run_checkpoint(int(rest[0]))
        print(json.dumps(result))
        return

    print("wall seconds per step (import: ChannelGraph.from_json); CPU s: the three steps' CPU time "
          "(steadier on a loaded machine); load_model CPU s: the CLI/app file path, for comparison")
    print(f"{'graph':<16}{'ops':>8}{'spaces':>8}{'import s':>10}{'compile s':>11}{'cost s':>9}"
          f"{'total s':>9}{'CPU s':>8}{'peak MB':>9}{'load_model CPU s':>18}")
    for shape in ("chain", "residual"):
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.sizes:
                path = str(Path(tmp) / f"{shape}{n}.json")
                written = child(["write", shape, str(n), path])
                rows.append(written if "error" in written else child(["graph", path]))
        for r in rows:
            if "error" in r:
                print(f"{shape:<16} failed: {r['error']}")
                continue
            print(f"{shape:<16}{r['ops']:>8}{r['spaces']:>8}{r['import_s']:>10.2f}{r['compile_s']:>11.2f}"
                  f"{r['cost_s']:>9.2f}{r['total_s']:>9.2f}{r['cpu_s']:>8.2f}{r['peak_mb']:>9.0f}"
                  f"{r['load_model_cpu_s']:>18.2f}")
        good = [r for r in rows if "error" not in r]
        if len(good) >= 2:
            ops = [r["ops"] for r in good]
            print(f"{'':<16}growth exponent vs ops: wall {growth_exponent(ops, [r['total_s'] for r in good]):.2f}, "
                  f"CPU {growth_exponent(ops, [r['cpu_s'] for r in good]):.2f} (aim: <= 1.1)")
    if args.pt2:
        rows = [child(["pt2", str(n)]) for n in args.pt2_sizes]
        for r in rows:
            if "error" in r:
                print(f"relu chain .pt2  failed: {r['error']}")
                continue
            print(f"relu chain .pt2 {r['ops']:>8} ops: export {r['export_s']:.1f} s (torch), import "
                  f"{r['import_s']:.2f} s, peak {r['peak_mb']:.0f} MB")
        good = [r for r in rows if "error" not in r]
        if len(good) >= 2:
            print(f"{'':<16}growth exponent (.pt2 import time vs ops): "
                  f"{growth_exponent([r['ops'] for r in good], [r['import_s'] for r in good]):.2f}")
    r = child(["checkpoint", str(args.checkpoint_keys)])
    if "error" in r:
        print(f"checkpoint match failed: {r['error']}")
    else:
        print(f"checkpoint: {r['keys']:,} keys, {r['matched']:,} bn scales matched (match_gammas) in "
              f"{r['match_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU (aim: < 5 s), peak {r['peak_mb']:.0f} MB")
    growth = []
    for keys in args.growth_keys:  # the file is written once, by torch.save in its own process (~45 s at 10^6)
        with tempfile.TemporaryDirectory() as tmp:
            written = child(["write-pt", str(keys), tmp])
            for where in ("in-process", "isolated") if keys == args.checkpoint_keys else ("in-process",):
                r = written if "error" in written else best_of([child(["file", str(keys), where, tmp])
                                                                  for _ in range(args.repeat)])
                if "error" in r:
                    print(f".pt checkpoint read + match ({where}, {keys:,} keys) failed: {r['error']}")
                    continue
                if where == "in-process":
                    growth.append(r)
                print(f".pt checkpoint read + match ({where}): {r['keys']:,} keys, {r['matched']:,} bn scales in "
                      f"{r['wall_s']:.2f} s wall (best of {', '.join(f'{w:.2f}' for w in r['walls'])}), "
                      f"{r['cpu_s']:.2f} s CPU in this process (aim: < 5 s at 10^6), peak {r['peak_mb']:.0f} MB "
                      f"in this process")
    if len(growth) >= 2:
        sizes = [r["keys"] for r in growth]
        print(f"{'':<16}growth exponent (.pt read + match in process vs keys): wall "
              f"{growth_exponent(sizes, [r['wall_s'] for r in growth]):.2f}, CPU "
              f"{growth_exponent(sizes, [r['cpu_s'] for r in growth]):.2f} (1 is linear)")


if __name__ == "__main__":
    main()
