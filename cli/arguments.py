"""Command-line values checked where they are parsed: one line and exit status 2 for a bad one.

argparse calls the ``*_value`` functions below as option types; an ``ArgumentTypeError``
becomes ``morphscope CMD: error: argument --threshold: ...``. An input shape is checked
against the memory limit by :func:`check_input_memory` before the model is built, and against
the model's strides and activations by :func:`check_input_shape` once it is imported.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn, Sequence

from morphscope.errors import GraphError
from morphscope.graph import ChannelGraph
from morphscope.importers.limits import DEFAULT_LIMITS, LIMIT_CEILINGS, Limits
from morphscope.units import human_bytes

MAX_MULTIPLIER = 100.0  # a width multiplier above this is a typo, not a design (1e4x the MACs)
# Options whose value may start with "-" ("-inf", "-1", "-3,224,224"): argparse would read
# such a value as an option, so the value is refused with a message about the option instead.
SIGNED_VALUE_OPTIONS = ("--threshold", "--multiplier", "--budget", "--input-shape")
EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def attach_signed_values(argv: Sequence[str]) -> list[str]:
    """``["--threshold", "-inf"]`` -> ``["--threshold=-inf"]`` for :data:`SIGNED_VALUE_OPTIONS`,
    so that a negative or non-finite value reaches its type check.

    Examples
    --------
    >>> attach_signed_values(["report", "m", "--threshold", "-inf", "--json"])
    ['report', 'm', '--threshold=-inf', '--json']
    """
    out: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token in SIGNED_VALUE_OPTIONS:
            value = next(tokens, None)
            if value is not None and value.startswith("-") and not value.startswith("--"):
                out.append(f"{token}={value}")
                continue
            out.append(token)
            if value is not None:
                out.append(value)
            continue
        out.append(token)
    return out


def _bounded(what: str, low: float, low_inclusive: bool, high: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite float in ``[low, high]`` (``(low, high]`` if not inclusive)."""
    allowed = (f"{what} must be finite and {'>=' if low_inclusive else '>'} {low:g}"
               + (f" and <= {high:g}" if high < math.inf else ""))

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; {allowed}") from None
        in_range = value >= low if low_inclusive else value > low
        if not (math.isfinite(value) and in_range and value <= high):
            raise argparse.ArgumentTypeError(f"{text}: {allowed}")
        return value

    parse.__name__ = what  # argparse names the type in its own messages
    return parse


threshold_value = _bounded("a threshold on |gamma|", 0.0, low_inclusive=True)
_memory_gb_value = _bounded("a parse limit", 0.0, low_inclusive=False,
                            high=LIMIT_CEILINGS["max_memory_bytes"] / 2**30)
_cpu_seconds_value = _bounded("a parse limit", 0.0, low_inclusive=False, high=LIMIT_CEILINGS["max_cpu_s"])
_wall_seconds_value = _bounded("a parse limit", 0.0, low_inclusive=False, high=LIMIT_CEILINGS["max_wall_s"])
multiplier_value = _bounded("a width multiplier", 0.0, low_inclusive=False, high=MAX_MULTIPLIER)
budget_value = _bounded("a budget", 0.0, low_inclusive=False)
def hardware_value(text: str) -> str:
    """An argparse type: a named hardware or a latency profile file that loads."""
    from morphscope.analyzers.hardware import get_hardware
    from morphscope.errors import MorphScopeError

    try:
        get_hardware(text)
    except MorphScopeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


MAX_ROUND_TO = 1024  # channel alignment: 8 for tensor cores, 16-128 for wider vector units
MAX_COUNT = 10_000  # timed calls, images per call, threads


def whole_number_value(what: str, high: int, example: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number in ``[1, high]``, refused naming ``what`` it counts."""

    def parse(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: {what} from 1 to {high}{example}")
        return int(text)

    parse.__name__ = what  # argparse names the type in its own messages
    return parse


round_to_value = whole_number_value("round widths to a whole number of channels", MAX_ROUND_TO, " (e.g. 8)")
count_value = whole_number_value("a whole number", MAX_COUNT)


def input_shape_value(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` -> ``(3, 224, 224)``: channels, height and width, positive integers.

    Examples
    --------
    >>> input_shape_value("3,160,192")
    (3, 160, 192)
    """
    expected = "expected positive integers C,H,W such as 3,224,224"
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {expected}") from None
    if len(shape) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} has {len(shape)} value(s); zoo models take "
                                         f"2-D images: {expected}")
    if min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: {expected}")
    return shape


FLOAT32_BYTES = 4  # zoo models are built, run and exported in float32


def check_input_memory(requested: tuple[int, ...], limits: Limits) -> None:
    """Refuse an ``--input-shape`` whose one float32 image alone exceeds the memory limit,
    before the model is built (torch cannot even describe 3x4294967296x4294967296).

    Raises
    ------
    GraphError
        One line naming the shape, its size and the limit.
    """
    image_bytes = math.prod(requested) * FLOAT32_BYTES
    if image_bytes > limits.max_memory_bytes:
        raise GraphError(f"--input-shape {','.join(map(str, requested))}: one float32 image is "
                         f"{human_bytes(image_bytes)}, over the {human_bytes(limits.max_memory_bytes)} "
                         "memory limit (--max-memory-gb); use a smaller H,W")


def check_input_shape(graph: ChannelGraph, requested: tuple[int, ...], limits: Limits) -> None:
    """Refuse an ``--input-shape`` the model was not captured at, one too small for its
    strides (a strided op that gets fewer pixels than its stride), or one at which an op's
    float32 output (one image) exceeds the memory limit (running or exporting the model
    would allocate it).

    Raises
    ------
    GraphError
        One line naming the model, the shape and the op that does not fit.
    """
    shape = ",".join(map(str, requested))
    if tuple(graph.input_shape) != tuple(requested):
        raise GraphError(f"--input-shape {shape}: {graph.name} was captured at "
                         f"{','.join(map(str, graph.input_shape))} instead; give a shape the "
                         "model takes as it is (torchvision zoo models: 3 channels, H = W)")
    for name, attrs in graph.ops():
        stride, spatial = attrs.get("stride"), attrs.get("in_spatial")
        if stride and spatial and any(s > n for s, n in zip(stride, spatial)):
            raise GraphError(f"--input-shape {shape} is too small for {graph.name}: {name} "
                             f"(stride {'x'.join(map(str, stride))}) gets a "
                             f"{'x'.join(map(str, spatial))} map; use a larger H,W")
    for name, attrs in graph.ops():
        channels, spatial = attrs.get("out_channels") or 0, attrs.get("out_spatial") or ()
        output_bytes = channels * math.prod(spatial) * FLOAT32_BYTES
        if output_bytes > limits.max_memory_bytes:
            raise GraphError(f"--input-shape {shape} is too large for {graph.name}: {name} outputs "
                             f"{channels}x{'x'.join(map(str, spatial))} ({human_bytes(output_bytes)} "
                             f"in float32), over the {human_bytes(limits.max_memory_bytes)} memory "
                             "limit (--max-memory-gb); use a smaller H,W")


def limit_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-memory-gb``, ``--max-cpu-seconds``, ``--max-wall-seconds``: the worker's limits."""
    limits = parser.add_argument_group("parse limits (files are parsed in a limited child process)")
    limits.add_argument("--max-memory-gb", type=_memory_gb_value, metavar="GB",
                        default=DEFAULT_LIMITS.max_memory_bytes / 2**30,
                        help=f"memory one parse may use (default {DEFAULT_LIMITS.max_memory_bytes / 2**30:g})")
    limits.add_argument("--max-cpu-seconds", type=_cpu_seconds_value, metavar="S",
                        default=DEFAULT_LIMITS.max_cpu_s,
                        help=f"CPU time one parse may use (default {DEFAULT_LIMITS.max_cpu_s:g})")
    limits.add_argument("--max-wall-seconds", type=_wall_seconds_value, metavar="S",
                        default=DEFAULT_LIMITS.max_wall_s,
                        help=f"wall-clock time one parse may take (default {DEFAULT_LIMITS.max_wall_s:g})")


def limits_of(args: argparse.Namespace) -> Limits:
    """The worker limits the command line asks for."""
    return Limits(max_memory_bytes=int(args.max_memory_gb * 2**30),
                  max_cpu_s=max(1, math.ceil(args.max_cpu_seconds)), max_wall_s=args.max_wall_seconds)


def limits_help(limits: Limits = DEFAULT_LIMITS) -> str:
    """The parse limits in words, for ``--help``."""
    return (f"Model and checkpoint files are parsed in a child process limited to "
            f"{human_bytes(limits.max_memory_bytes)} of memory, {limits.max_cpu_s:g} s of CPU "
            f"({limits.max_wall_s:g} s wall clock) and {limits.max_open_files} open files; files "
            f"up to {human_bytes(limits.max_file_bytes)}, zip archives up to "
            f"{human_bytes(limits.max_unzipped_bytes)} unzipped and {limits.max_zip_ratio}x per "
            f"member, JSON up to {human_bytes(limits.max_json_bytes)} and "
            f"{limits.max_json_depth} levels deep, {limits.max_params:,} declared parameters, "
            f"{human_bytes(limits.max_tensor_bytes)} per tensor. torchvision:, keras: and "
            "example: names are built in this process.")
