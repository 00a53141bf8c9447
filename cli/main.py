"""The ``morphscope`` command: report, expand and export MorphNet structures from a shell.

Errors caused by input print one line on stderr and exit with status 2; anything else is a
bug and is allowed to surface.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any, Sequence, TextIO

from morphscope.analyzers.hardware import DEFAULT_HARDWARE, HARDWARE
from morphscope.analyzers.resources import RESOURCES
from morphscope.cli.arguments import (EXIT_BAD_INPUT, MAX_MULTIPLIER, OneLineParser,
                                      attach_signed_values, budget_value, check_input_memory,
                                      check_input_shape, count_value, hardware_value, input_shape_value,
                                      limit_arguments, limits_help, limits_of, multiplier_value,
                                      round_to_value, threshold_value)
from morphscope.cli.scope import scope_arguments, scope_line, scope_of
from morphscope.errors import MorphScopeError

EXPORT_FILES_RULE = ("Outputs are written whole or not at all: each to a temporary file beside "
                     "it, renamed into place once every output is complete, so a failure or a "
                     "kill leaves the previous files as they were. An existing file is replaced; "
                     "an output naming one of the command's inputs (MODEL, a CKPT) or another "
                     "output is refused before anything runs.")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="a .pt2/.keras/.h5/.json file, torchvision:NAME, keras:NAME or "
                        "example:digits")
    parser.add_argument("--input-shape", metavar="C,H,W", type=input_shape_value,
                        help="input size for torchvision:/keras: models (default: the model's "
                        "own); files carry their own")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    scope_arguments(parser)
    limit_arguments(parser)


def _hardware_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--hardware", default=DEFAULT_HARDWARE, type=hardware_value, metavar="NAME|FILE.json",
                        help=f"{help_text}: a roofline ({', '.join(sorted(HARDWARE))}; default "
                        f"{DEFAULT_HARDWARE}) or a latency profile written by morphscope profile")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="morphscope", epilog=limits_help(),
        description="Static analysis of MorphNet structures: seed and alive-channel costs.")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="per-layer table and totals for a model",
                                 epilog=limits_help())
    _model_args(report)
    report.add_argument("--all", action="store_true", help="list every op, not only those "
                        "that compute or own parameters")
    _hardware_arg(report, "device for the latency lines, the seed's and each checkpoint's")
    _checkpoint_args(report, required=False)

    expand = commands.add_parser("expand", help="solve the width multiplier for a budget",
                                 epilog=limits_help())
    _model_args(expand)
    _checkpoint_args(expand, required=True)
    expand.add_argument("--resource", default="flops", choices=list(RESOURCES), metavar="NAME",
                        help=f"cost to keep within the budget: {', '.join(RESOURCES)} "
                        "(default flops)")
    expand.add_argument("--budget", type=budget_value, metavar="N",
                        help="cost to meet, finite and > 0 (default: the seed's own)")
    _hardware_arg(expand, "device for --resource latency")
    _round_to_arg(expand)

    export = commands.add_parser("export", help="write widths JSON, a layer table, a model "
                                 "(--json: what was written, as one JSON object)",
                                 description=EXPORT_FILES_RULE, epilog=limits_help())
    _model_args(export)
    _checkpoint_args(export, required=True)
    export.add_argument("--out", required=True, metavar="FILE", help="widths file: morph-net JSON (.json) "
                        "or the per-layer table (.csv)")
    export.add_argument("--table", metavar="FILE", help="also write the per-layer table (seed, alive and expanded "
                        "width, MACs, params): .csv or .json")
    export.add_argument("--multiplier", type=multiplier_value, metavar="W",
                        help=f"expand the widths by this factor (> 0, at most {MAX_MULTIPLIER:g})")
    export.add_argument("--model-out", metavar="FILE", help="rebuilt model to retrain: .pt2 (PyTorch) or .keras")
    export.add_argument("--copy-weights", action="store_true",
                        help="copy the kept channels' weights into the rebuilt model (the alive "
                        "ones, then the best-scored where --round-to needs more)")
    _round_to_arg(export)

    profile = commands.add_parser("profile", help="time this machine's op classes and fit a latency "
                                  "profile (--hardware FILE.json everywhere)")
    profile.add_argument("--out", required=True, metavar="FILE.json", help="the profile to write")
    profile.add_argument("--name", default="this-machine", help="what reports call it")
    profile.add_argument("--framework", default="torch", choices=("torch", "keras"),
                         help="whose ops to time: PyTorch's (eager) or Keras' (tf.function) (default torch)")
    _timing_args(profile)

    bench = commands.add_parser("bench", help="time the seed and the morphed model on this machine, "
                                "predictions beside", epilog=limits_help())
    _model_args(bench)
    _checkpoint_args(bench, required=False)
    bench.add_argument("--multiplier", type=multiplier_value, metavar="W", help="expand the widths by this factor")
    _round_to_arg(bench)
    _hardware_arg(bench, "the prediction to compare with")
    bench.add_argument("--runs", type=count_value, default=20, metavar="N", help="timed calls (default 20)")
    _timing_args(bench)
    return parser


def _timing_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=count_value, default=1, metavar="N", help="images per call (default 1)")
    parser.add_argument("--threads", type=count_value, metavar="N",
                        help="intra-op threads (default: the framework's own choice)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to time (default cpu)")


def _round_to_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--round-to", type=round_to_value, default=1, metavar="N",
                        help="round every pruned width up to a multiple of N (8 for tensor cores); "
                        "tied layers, grouped convs and GroupNorm stay consistent (default 1)")


def _checkpoint_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--checkpoint", action="append", required=required, default=None,
                        metavar="CKPT", help="gammas (.pt/.pth/.safetensors/.keras/.h5) or a "
                        "morph-net alive JSON; repeat for several")
    parser.add_argument("--threshold", type=threshold_value, default=1e-2, metavar="T",
                        help="a channel is alive when its group's max |gamma| is above this "
                        "(finite, >= 0; default 0.01)")


def _format_tuple(value: Any) -> str:
    return "x".join(str(v) for v in value) if value else "-"


def print_report_table(doc: dict[str, Any], hardware: str, out: TextIO | None = None) -> None:
    """Print the per-layer table and totals, like torchinfo / model.summary()."""
    from morphscope.analyzers.hardware import get_hardware
    from morphscope.units import human_count, human_seconds

    hw = get_hardware(hardware)
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
    print(f"Latency: {human_seconds(seed['latency_s'][hw.name])}  ({hw.prediction})", file=out)
    if doc["detached_params"]:
        detached = sum(doc["detached_params"].values())
        print(f"Not in the inference graph (training-only heads, counted in params): "
              f"{detached:,} in {', '.join(doc['detached_params'])}", file=out)
    if doc["opaque"]:
        print(f"Pinned (opaque ops, channels never pruned): {len(doc['opaque'])} ops", file=out)
    for note in doc["notes"]:
        print(f"Note: {note}", file=out)
    print(f"Convention: {doc['convention']}", file=out)
    if "scope" in doc:
        print(f"Analysed: {scope_line(doc['scope'])}", file=out)


ZOO_PREFIXES = ("torchvision:", "keras:")


def _analysis(args: argparse.Namespace):
    from morphscope.analyzers.morph import morph
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.checkpoints import load_structure
    from morphscope.importers.load import load_model

    if args.input_shape is not None and not args.model.startswith(ZOO_PREFIXES):
        raise MorphScopeError(f"--input-shape applies to {' and '.join(ZOO_PREFIXES)} models; "
                              f"{args.model} carries its own input shape")
    limits = limits_of(args)
    if args.input_shape is not None:
        check_input_memory(args.input_shape, limits)
    _progress(f"importing {args.model} ...")
    graph = load_model(args.model, args.input_shape, limits=limits)
    if args.input_shape is not None:
        check_input_shape(graph, args.input_shape, limits)
    model = compile_width_model(graph, args.convention, scope_of(args))
    structures = [load_structure(graph, path, limits=limits) for path in (args.checkpoint or [])]
    morphed = [morph(model, s, args.threshold) for s in structures]
    return graph, model, structures, morphed


def _progress(message: str) -> None:
    """Progress for a person at a terminal; scripts and pipes get clean stderr."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def _run_report(args: argparse.Namespace) -> int:
    from morphscope.analyzers.hardware import get_hardware
    from morphscope.analyzers.conventions import scope_summary
    from morphscope.analyzers.report import seed_report, structure_entry

    graph, model, structures, morphed = _analysis(args)
    doc = seed_report(graph, every_op=args.all, convention=args.convention)
    doc["scope"] = scope_summary(graph, model.spaces, scope_of(args), args.convention)
    hardware = get_hardware(args.hardware)
    doc["seed"]["latency_s"][hardware.name] = model.target_cost(model.seed_widths, "latency", hardware)
    doc["morphed"] = [structure_entry(graph, model, s, m, args.threshold, hardware)
                      for s, m in zip(structures, morphed)]
    if args.json:
        json.dump(doc, sys.stdout)
        print()
        return 0
    print_report_table(doc, args.hardware)
    for entry in doc["morphed"]:
        print_morphed(entry, doc["seed"])
    return 0


def print_morphed(entry: dict[str, Any], seed: dict[str, Any], out: TextIO | None = None) -> None:
    """Totals of one checkpoint against the seed, then its topology findings."""
    from morphscope.units import human_count, human_seconds, signed_percent

    print(f"\n{entry['checkpoint']}", file=out)
    for key in ("flops", "params", "size"):
        print(f"  {key:<7} {human_count(entry[key]):>8}  ({signed_percent(entry[key], seed[key])} "
              f"vs seed {human_count(seed[key])})", file=out)
    seed_s = seed["latency_s"][entry["hardware"]]
    print(f"  latency {human_seconds(entry['latency_s']):>8}  ({signed_percent(entry['latency_s'], seed_s)} "
          f"vs seed {human_seconds(seed_s)}, {entry['latency_prediction']})", file=out)
    for add, branch, reason in entry["removable_blocks"]:
        print(f"  removable block: branch {branch} into {add} ({reason})", file=out)
    for cat, tower in entry["dead_towers"]:
        print(f"  dead tower: {tower} into {cat}", file=out)
    for group in entry["inconsistent_groups"]:
        print(f"  group {group['name']}: {len(group['broken'])} channels alive in some bn "
              f"members, dead in others", file=out)
    for note in entry["notes"]:
        print(f"  note: {note}", file=out)


def _run_expand(args: argparse.Namespace) -> int:
    from morphscope.analyzers.hardware import get_hardware
    from morphscope.analyzers.report import expand_entry

    graph, model, _, morphed = _analysis(args)
    hardware = get_hardware(args.hardware)
    budget = args.budget if args.budget is not None else \
        model.target_cost(model.seed_widths, args.resource, hardware)
    results = [expand_entry(graph, model, m, args.resource, budget, hardware, args.round_to) for m in morphed]
    if args.json:
        json.dump({"model": graph.name, "expanded": results}, sys.stdout)
        print()
        return 0
    for r in results:
        fmt = (lambda v: f"{v:.4g} s") if r["resource"] == "latency" else (lambda v: f"{v:,.0f}")
        print(f"{r['checkpoint']}: width multiplier {r['factor']:.4f} brings {r['resource']} to "
              f"{fmt(r['cost'])} (budget {fmt(r['budget'])})")
        if r["round_to"] > 1:
            print(f"  {_rounding_line(r['round_to'], r['rounding_added'])}")
        for name, width in r["widths"].items():
            print(f"  {name:<50} {width:>6}")
    return 0


def _rounding_line(round_to: int, added: dict[str, int]) -> str:
    from morphscope.units import human_count

    return (f"widths rounded up to multiples of {round_to}: +{human_count(added['flops'])} FLOPs, "
            f"+{human_count(added['params'])} params over the unrounded widths")


def _run_export(args: argparse.Namespace) -> int:
    from morphscope.analyzers.morph import export_plan, plan_totals
    from morphscope.analyzers.report import rounding_added
    from morphscope.exporters.export import MODEL_SUFFIX
    from morphscope.exporters.files import OutputError, check_targets, write_files
    from morphscope.exporters.writers import layer_table, table_csv, widths_json
    from morphscope.importers.objects import is_pt2

    if len(args.checkpoint) != 1:
        raise MorphScopeError("export takes exactly one --checkpoint")
    targets = check_targets(_export_targets(args), _input_files(args))
    graph, model, structures, morphed = _analysis(args)
    structure, m = structures[0], morphed[0]
    plan = export_plan(graph, model, m, args.multiplier, structure.gammas, args.threshold, args.round_to,
                       remove_blocks=not is_pt2(args.model))
    rows = layer_table(graph, model, m.widths, plan.widths)
    contents = {targets["--out"]: table_csv(rows) if _is_csv(args.out) else
                widths_json(graph, model, plan.widths) + "\n"}
    if args.table:
        contents[targets["--table"]] = table_csv(rows) if _is_csv(args.table) else \
            json.dumps(rows, indent=2) + "\n"
    summary: dict[str, Any] = {"wrote": [a for a in (args.out, args.table, args.model_out) if a],
                               "round_to": args.round_to,
                               "rounding_added": rounding_added(model, m.widths, args.multiplier, args.round_to)}
    if args.model_out:
        suffix = MODEL_SUFFIX[graph.framework]
        if not args.model_out.lower().endswith(suffix):
            raise OutputError(f"--model-out {args.model_out}: a rebuilt {graph.framework} model is "
                              f"saved as {suffix}; name the file *{suffix}")
        contents[targets["--model-out"]], params = _rebuilt_model(args, graph, model, plan)
        summary.update(model_params=params, predicted_params=plan_totals(model, plan)["params"],
                       notes=list(plan.notes))
    write_files({path: text.encode() if isinstance(text, str) else text
                 for path, text in contents.items()})
    if args.json:
        print(json.dumps(summary))
        return 0
    for path in summary["wrote"]:
        print(f"wrote {path}" + (f": {summary['model_params']:,} parameters (predicted "
                                 f"{summary['predicted_params']:,})" if path == args.model_out else ""))
    if args.round_to > 1:
        print(f"  {_rounding_line(args.round_to, summary['rounding_added'])}")
    for note in summary.get("notes", []):
        print(f"  note: {note}")
    return 0


def _is_csv(path: str) -> bool:
    return path.lower().endswith(".csv")


def _export_targets(args: argparse.Namespace) -> dict[str, str]:
    """Option -> file for every output the export writes."""
    named = {"--out": args.out, "--table": args.table, "--model-out": args.model_out}
    return {option: path for option, path in named.items() if path is not None}


def _input_files(args: argparse.Namespace) -> dict[str, str]:
    """Option -> file for every file the command reads (a bundled example's too)."""
    from morphscope.importers.load import EXAMPLES, EXAMPLES_DIR

    model = args.model
    if model.startswith("example:") and model.split(":", 1)[1] in EXAMPLES:
        model = str(EXAMPLES_DIR / EXAMPLES[model.split(":", 1)[1]]["model"])
    files = {"MODEL": model}
    files.update({f"--checkpoint {i + 1}" if len(args.checkpoint) > 1 else "--checkpoint": path
                  for i, path in enumerate(args.checkpoint)})
    return files


def _rebuilt_model(args, graph, model, plan) -> tuple[bytes, int]:
    """The rebuilt model file's bytes and parameter count (the function the app and API use)."""
    from morphscope.exporters.export import rebuilt_model_bytes
    from morphscope.importers.objects import rebuild_source

    source = rebuild_source(args.model, args.input_shape, limits=limits_of(args))
    return rebuilt_model_bytes(source, graph, model, plan, args.copy_weights)


def _run_profile(args: argparse.Namespace) -> int:
    from morphscope.analyzers.hardware import profile_from_doc
    from morphscope.exporters.files import check_targets, write_files
    from morphscope.exporters.timing import profile_device
    from morphscope.units import human_seconds

    target = check_targets({"--out": args.out}, {})["--out"]
    doc = profile_device(args.name, args.batch, args.threads, args.device,
                         progress=lambda done, total: _progress(f"timed op {done} of {total}"),
                         framework=args.framework)
    write_files({target: (json.dumps(doc, indent=2) + "\n").encode()})
    hw = profile_from_doc(doc, args.out)
    print(f"wrote {args.out}: {hw.source}")
    for cls, t in hw.classes.items():
        print(f"  {cls:<15} {t.s_per_gflop * 1e3:>9.3f} ms/GFLOP {t.s_per_gb * 1e3:>9.3f} ms/GB "
              f"overhead {human_seconds(t.overhead_s)}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from morphscope.analyzers.hardware import get_hardware
    from morphscope.analyzers.morph import export_plan
    from morphscope.exporters.timing import measure_rebuild
    from morphscope.importers.objects import is_pt2, rebuild_source
    from morphscope.units import human_seconds

    if args.checkpoint and len(args.checkpoint) != 1:
        raise MorphScopeError("bench takes at most one --checkpoint")
    graph, model, structures, morphed = _analysis(args)
    plan = export_plan(graph, model, morphed[0], args.multiplier, structures[0].gammas, args.threshold,
                       args.round_to, remove_blocks=not is_pt2(args.model)) if morphed else None
    source = rebuild_source(args.model, args.input_shape, limits=limits_of(args))
    r = measure_rebuild(source, graph, model, plan, get_hardware(args.hardware), args.batch, args.threads,
                        args.runs, args.device, progress=_progress)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']}{': ' + args.checkpoint[0] if args.checkpoint else ''}")
    print(f"{'':<9} {'measured (median, min-max)':>30} {'predicted':>11} {'error':>7}")
    for label in ("seed", "morphed"):
        if label in r:
            row = r[label]
            print(f"{label:<9} {human_seconds(row['measured_s']):>11} ({human_seconds(row['min_s'])}"
                  f"-{human_seconds(row['max_s'])}) {human_seconds(row['predicted_s']):>11} {row['error']:>+7.0%}")
    if "morphed" in r:
        print(f"speedup: {r['speedup_measured']:.2f}x measured, {r['speedup_predicted']:.2f}x predicted")
    print(f"measured on {r['machine']} ({r['device']}), PyTorch {r['threads']} threads, batch {r['batch']}, "
          f"median of {r['runs']}+ calls after 5 warm-up calls; predicted: {r['prediction']}")
    return 0


COMMANDS = {"report": _run_report, "expand": _run_expand, "export": _run_export, "profile": _run_profile,
            "bench": _run_bench}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``morphscope`` console script."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `morphscope ... | head` ends quietly
    args = build_parser().parse_args(attach_signed_values(sys.argv[1:] if argv is None else argv))
    try:
        return COMMANDS[args.command](args)
    except MorphScopeError as err:
        print(f"morphscope: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
