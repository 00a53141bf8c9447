"""The ``morphscope`` command: report, expand and export MorphNet structures from a shell.

Errors caused by input print one line on stderr and exit with status 2; anything else is a
bug and is allowed to surface.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from morphscope.errors import MorphScopeError

EXIT_BAD_INPUT = 2


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="a .pt2/.keras/.h5/.json file, torchvision:NAME or keras:NAME")
    parser.add_argument("--input-shape", metavar="C,H,W",
                        help="input size for zoo models (default: the model's own)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="morphscope",
        description="Static analysis of MorphNet structures: seed and alive-channel costs.")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="per-layer table and totals for a model")
    _model_args(report)
    report.add_argument("--all", action="store_true", help="list every op, not only those "
                        "that compute or own parameters")
    report.add_argument("--hardware", default="V100", help="device for the latency line")
    return parser


def _format_tuple(value: Any) -> str:
    return "x".join(str(v) for v in value) if value else "-"


def print_report_table(doc: dict[str, Any], hardware: str, out=sys.stdout) -> None:
    """Print the per-layer table and totals, like torchinfo / model.summary()."""
    from analyzers.hardware import get_hardware
    from explorer.format import human_count, human_seconds

    get_hardware(hardware)
    rows = doc["layers"]
    name_width = min(60, max([len("Layer")] + [len(r["name"]) for r in rows]))
    header = (f"{'Layer':<{name_width}}  {'Kind':<7} {'In':>6} {'Out':>6} {'Kernel':>7} "
              f"{'Stride':>6} {'Output':>9} {'MACs':>15} {'Params':>12}")
    print(f"{doc['model']}  ({doc['framework']}, input {_format_tuple(doc['input_shape'])})", file=out)
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in rows:
        name = r["name"] if len(r["name"]) <= name_width else "..." + r["name"][-name_width + 3:]
        print(f"{name:<{name_width}}  {r['kind']:<7} {r['in_channels'] or '-':>6} "
              f"{r['out_channels'] or '-':>6} {_format_tuple(r['kernel']):>7} "
              f"{_format_tuple(r['stride']):>6} {_format_tuple(r['out_spatial']):>9} "
              f"{r['macs']:>15,} {r['params']:>12,}", file=out)
    print("-" * len(header), file=out)
    seed = doc["seed"]
    print(f"MACs:   {seed['macs']:>16,}  ({human_count(seed['macs'])})", file=out)
    print(f"FLOPs:  {seed['flops']:>16,}  ({human_count(seed['flops'])}, = 2 x MACs)", file=out)
    print(f"Params: {seed['params']:>16,}  (trainable {seed['trainable_params']:,}, "
          f"non-trainable {seed['non_trainable_params']:,})", file=out)
    print(f"Size:   {seed['size']:>16,}  (conv/linear kernel weights, morph-net model size)", file=out)
    print(f"Latency ({hardware} roofline): {human_seconds(seed['latency_s'][hardware])}", file=out)
    if doc["detached_params"]:
        detached = sum(doc["detached_params"].values())
        print(f"Not in the inference graph (training-only heads, counted in params): "
              f"{detached:,} in {', '.join(doc['detached_params'])}", file=out)
    if doc["opaque"]:
        print(f"Pinned (opaque ops, channels never pruned): {len(doc['opaque'])} ops", file=out)
    print(f"Convention: {doc['convention']}", file=out)


def _run_report(args: argparse.Namespace) -> int:
    from analyzers.report import seed_report
    from importers.load import load_model, parse_input_shape

    graph = load_model(args.model, parse_input_shape(args.input_shape))
    doc = seed_report(graph, every_op=args.all)
    if args.json:
        json.dump(doc, sys.stdout)
        print()
    else:
        print_report_table(doc, args.hardware)
    return 0


COMMANDS = {"report": _run_report}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``morphscope`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MorphScopeError as err:
        print(f"morphscope: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
