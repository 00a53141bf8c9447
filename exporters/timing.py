"""Measured latency: time a model's forward pass on this machine, and fit a latency profile.

:func:`time_call` is the one timing loop (warm-up, then repeated runs, median and spread; the
clock is a parameter, so the loop is tested without timing anything). :func:`measure_model`
times a PyTorch module at a batch and thread count; :func:`measure_structures` rebuilds a
seed and a morphed model and times both, with the predictions beside them.
:func:`profile_device` times each op class the cost model knows over a sweep of widths and
resolutions and fits the profile :mod:`morphscope.analyzers.hardware` reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from morphscope.analyzers.hardware import DEFAULT_CLASS, ClassTimes, profile_doc


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median, min and max of ``runs`` timed calls after ``warmup``, at
    ``threads`` intra-op threads (0: not set by the timing)."""

    median_s: float
    min_s: float
    max_s: float
    runs: int
    warmup: int
    threads: int = 0


def time_call(fn: Callable[[], Any], runs: int = 20, warmup: int = 5, min_time_s: float = 0.0,
              clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``runs`` timed ones (more while
    their total is under ``min_time_s``, up to 10x ``runs``); the median is the figure.

    Examples
    --------
    A fake clock that advances 2 s per read times every call at 2 s:

    >>> ticks = iter(range(0, 1000, 2))
    >>> time_call(lambda: None, runs=3, warmup=1, clock=lambda: next(ticks)).median_s
    2
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < runs or (sum(times) < min_time_s and len(times) < 10 * runs):
        start = clock()
        fn()
        times.append(clock() - start)
    return Timing(statistics.median(times), min(times), max(times), len(times), warmup)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """PyTorch's intra-op threads set to ``threads`` for the body (restored after)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


COLD_BYTES = 64 << 20  # inputs rotated through per call: more than a server CPU's last-level cache


def input_copies(numel: int, cold: bool) -> int:
    """How many copies of a ``numel``-value float32 input a timing rotates through: one, or
    (``cold``) as many as fill :data:`COLD_BYTES`, from 1 to 64."""
    return max(1, min(64, COLD_BYTES // (4 * numel))) if cold else 1


def time_over_inputs(forward: Callable[[Any], Any], inputs: list[Any], runs: int, warmup: int,
                     clock: Callable[[], float]) -> Timing:
    """:func:`time_call` of ``forward`` on each of ``inputs`` in turn (at least 0.2 s timed)."""
    turn = iter(range(1 << 62))
    return time_call(lambda: forward(inputs[next(turn) % len(inputs)]), runs, warmup, min_time_s=0.2, clock=clock)


def measure_model(module: Any, input_shape: tuple[int, ...], batch: int = 1, threads: int | None = None,
                  runs: int = 20, warmup: int = 5, device: str = "cpu",
                  clock: Callable[[], float] = time.perf_counter, cold: bool = False) -> Timing:
    """Seconds per forward pass of a PyTorch module (eval mode, no autograd) on a random
    input of ``(batch, *input_shape)``, at ``threads`` intra-op threads. ``cold``: each call
    reads another copy of the input (up to :data:`COLD_BYTES` of them in turn), as an op in a
    network reads what the op before it wrote, not what sat in cache since the last call."""
    import torch

    module = module.eval().to(device)
    copies = input_copies(batch * math.prod(input_shape), cold)
    inputs = [torch.randn((batch, *input_shape), device=device) for _ in range(copies)]

    def call(x: Any) -> None:
        module(x)
        if device != "cpu":
            torch.cuda.synchronize()

    with torch.inference_mode(), torch_threads(threads) as used:
        timing = time_over_inputs(call, inputs, runs, warmup, clock)
    return dataclasses.replace(timing, threads=used)


def machine_name(device: str = "cpu") -> str:
    """The processor or GPU a measurement ran on, as the system names it."""
    if device != "cpu":
        import torch

        return torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure_rebuild(source: Any, graph: Any, model: Any, plan: Any, hardware: Any, batch: int = 1,
                    threads: int | None = None, runs: int = 20, device: str = "cpu",
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time the seed and (with ``plan``) its rebuild, predictions beside: the dict of
    :func:`morphscope.measure` (the CLI's ``bench`` and the app's panel call this too).
    PyTorch modules run eagerly; Keras models as a ``tf.function`` (CPU only).

    Raises
    ------
    MorphScopeError
        A profile measured at another batch or in another framework, or a Keras model on cuda.
    """
    from morphscope.analyzers.morph import plan_totals
    from morphscope.errors import MorphScopeError
    from morphscope.exporters.export import runnable_module

    if hardware.is_profile and hardware.batch != batch:
        raise MorphScopeError(f"{hardware.name}: the profile was measured at batch {hardware.batch}; "
                              f"measure at batch {hardware.batch}, or profile this machine at batch {batch}")
    framework = hardware.measured.get("framework") if hardware.is_profile else None
    if framework not in (None, graph.framework):
        raise MorphScopeError(f"{hardware.name}: the profile was measured with {framework}; profile this machine "
                              f"with --framework {graph.framework} to predict a {graph.framework} model")
    if graph.framework == "keras" and device != "cpu":
        raise MorphScopeError(f"{graph.name}: Keras models are timed on the CPU here; use --device cpu")
    timing_of = framework_timing(graph.framework)
    scale = 1 if hardware.is_profile else batch  # a roofline predicts one image; a profile its own batch
    out: dict[str, Any] = {"model": graph.name, "machine": machine_name(device), "batch": batch, "runs": runs,
                           "device": device, "hardware": hardware.name,
                           "prediction": hardware.prediction + ("" if hardware.is_profile else f", x batch {batch}")}
    rows = {"seed": (None, model.target_cost(model.seed_widths, "latency", hardware))}
    if plan is not None:
        rows["morphed"] = (plan, plan_totals(model, plan, hardware)["latency_s"])
    with timing_of.threads(threads) as used:
        for label, (row_plan, predicted) in rows.items():
            if progress:
                progress(f"rebuilding and timing the {label} model")
            runnable = runnable_module(source, graph, model, row_plan)
            timing = timing_of.time(runnable, graph.input_shape, batch, runs, 5, device, time.perf_counter)
            out[label] = {"measured_s": timing.median_s, "min_s": timing.min_s, "max_s": timing.max_s,
                          "predicted_s": predicted * scale, "error": predicted * scale / timing.median_s - 1}
    out["threads"] = used
    if plan is not None:
        out["speedup_measured"] = speedup(out["seed"]["measured_s"], out["morphed"]["measured_s"])
        out["speedup_predicted"] = speedup(out["seed"]["predicted_s"], out["morphed"]["predicted_s"])
    return out


# -- the profile: each op class timed over a sweep, times fitted --------------------------------

SWEEP_SIDES = (7, 14, 28, 56, 112)
SWEEP_CHANNELS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
MAX_SWEEP_INPUT = 1 << 21  # channels x pixels of one swept input (8 MB of float32)


@dataclass(frozen=True)
class SweepOp:
    """One op a profile times, framework-neutral: ``kind`` is conv (``k``, ``stride``,
    ``groups``, ``bias``), bn, act (``act``), add, mul, concat, pool, global_pool or linear;
    ``cin`` / ``cout`` its channels. Each framework builds it (:func:`torch_op`,
    :func:`morphscope.exporters.keras_timing.keras_op`)."""

    kind: str
    cin: int
    cout: int = 0
    k: int = 1
    stride: int = 1
    groups: int = 1
    bias: bool = False
    act: str = ""


ACTIVATIONS = ("relu", "relu6", "silu", "hardswish", "sigmoid")


def sweep() -> Iterator[tuple[str, SweepOp, tuple[int, ...]]]:
    """(class, op, input shape C,H,W or C) of the ops a profile times: the widths and
    resolutions of common CNNs (16-512 channels, 7x7 to 112x112 maps, inputs up to 2^21 values)."""
    for side in SWEEP_SIDES:
        for n, c in enumerate(ch for ch in SWEEP_CHANNELS if 2 ** 11 <= ch * side * side <= MAX_SWEEP_INPUT):
            shape = (c, side, side)
            for cout in (c // 2, c, 2 * c, 4 * c):
                if cout * side * side <= 2 * MAX_SWEEP_INPUT:
                    yield "conv_1x1", SweepOp("conv", c, cout), shape
            for cout in (c // 2, c, 2 * c):
                if c * cout * side * side <= 2 ** 27:
                    yield "conv", SweepOp("conv", c, cout, 3), shape
            for k, stride in ((3, 1), (5, 1), (3, 2), (5, 2)):
                yield "conv_depthwise", SweepOp("conv", c, c, k, stride, groups=c), shape
            groups = next(g for g in (8, 7, 5, 3, 1) if c % g == 0)
            if groups > 1:
                yield "conv_grouped", SweepOp("conv", c, c, 3, groups=groups), shape
            yield "bn", SweepOp("bn", c, c), shape
            yield "act", SweepOp("act", c, c, act=ACTIVATIONS[n % len(ACTIVATIONS)]), shape
            for op in ("add", "mul", "concat"):
                yield op, SweepOp(op, c, 2 * c if op == "concat" else c), shape
            yield "pool", SweepOp("pool", c, c, 3, 2), shape
            yield "global_pool", SweepOp("global_pool", c, c), shape
    for c in SWEEP_CHANNELS:
        for cout in (c // 4, c, 4 * c):
            yield "linear", SweepOp("linear", c, cout, bias=True), (c,)
        yield "conv_1x1", SweepOp("conv", c, c // 4, bias=True), (c, 1, 1)  # squeeze-excitation convs on 1x1 maps
        yield "act", SweepOp("act", c, c, act=ACTIVATIONS[c % len(ACTIVATIONS)]), (c, 1, 1)
        yield "mul", SweepOp("mul", c, c), (c, 1, 1)


def torch_op(op: SweepOp) -> Any:
    """``op`` as a PyTorch module taking one input."""
    import torch
    from torch import nn

    class Binary(nn.Module):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.kind = kind

        def forward(self, x):
            return {"add": lambda: x + x, "mul": lambda: x * x, "concat": lambda: torch.cat([x, x], 1)}[self.kind]()

    if op.kind == "conv":
        return nn.Conv2d(op.cin, op.cout, op.k, op.stride, op.k // 2, groups=op.groups, bias=op.bias)
    if op.kind in ("add", "mul", "concat"):
        return Binary(op.kind)
    return {"bn": lambda: nn.BatchNorm2d(op.cin), "pool": lambda: nn.MaxPool2d(op.k, op.stride, op.k // 2),
            "global_pool": lambda: nn.AdaptiveAvgPool2d(1), "linear": lambda: nn.Linear(op.cin, op.cout, op.bias),
            "act": lambda: {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish,
                            "sigmoid": nn.Sigmoid}[op.act]()}[op.kind]()


def op_work(graph: Any, cls: str) -> tuple[float, float]:
    """FLOPs and bytes moved per image of the swept op (imported as ``graph``), as the cost
    model counts them."""
    from morphscope.analyzers.cost import latency_class
    from morphscope.analyzers.resources import FLOPS_PER_MAC
    from morphscope.analyzers.widths import compile_width_model

    model = compile_width_model(graph)
    per_op = model.per_op(model.seed_widths)
    rows = [model.costs.index[name] for name, attrs in graph.ops() if latency_class(attrs) == cls]
    return (float(FLOPS_PER_MAC * per_op["macs"][rows].sum()), float(per_op["bytes_moved"][rows].sum()))


def fit_class(flops: np.ndarray, bytes_moved: np.ndarray, seconds: np.ndarray, batch: int) -> ClassTimes:
    """Non-negative least squares of ``seconds = overhead + batch * (flops * a + bytes * b)``,
    weighted by 1 / seconds (so the fit minimizes relative error, what MAPE reports)."""
    from scipy.optimize import nnls

    features = np.stack([np.ones_like(seconds), batch * flops / 1e9, batch * bytes_moved / 1e9], axis=1)
    weights = 1.0 / seconds
    (overhead, a, b), _ = nnls(features * weights[:, None], seconds * weights)
    return ClassTimes(float(a), float(b), float(overhead))


@dataclass(frozen=True)
class FrameworkTiming:
    """How one framework takes part in a profile: builds a swept op or a calibration
    network, imports it for counting, times it, sets its threads, and names its version."""

    name: str
    build_op: Callable[[SweepOp, tuple[int, ...]], Any]
    build_network: Callable[[str, int], Any]
    load: Callable[[Any, tuple[int, ...], str], Any]
    time: Callable[..., Timing]  # (model, input shape, batch, runs, warmup, device, clock, cold)
    threads: Callable[[int | None], Any]  # a context manager yielding the threads used
    version: Callable[[], dict[str, str]]


def torch_timing() -> FrameworkTiming:
    """PyTorch's part (eager modules, eval mode, no autograd)."""
    import torch

    from morphscope.importers.torch_importer import load_module

    return FrameworkTiming(
        "torch", lambda op, shape: torch_op(op), lambda name, side: torch_network(name),
        lambda module, shape, name: load_module(module, shape, name=name),
        lambda module, shape, batch, runs, warmup, device, clock, cold=False: measure_model(
            module, shape, batch, None, runs, warmup, device, clock, cold),
        torch_threads, lambda: {"torch": torch.__version__})


def framework_timing(framework: str) -> FrameworkTiming:
    """The :class:`FrameworkTiming` of ``torch`` or ``keras`` (imported only when asked).

    Raises
    ------
    MorphScopeError
        For another framework name.
    """
    from morphscope.errors import MorphScopeError

    if framework == "keras":
        from morphscope.exporters.keras_timing import keras_timing

        return keras_timing()
    if framework == "torch":
        return torch_timing()
    raise MorphScopeError(f"--framework {framework}: choose torch or keras")


def profile_device(name: str, batch: int = 1, threads: int | None = None, device: str = "cpu",
                   runs: int = 10, progress: Callable[[int, int], None] | None = None,
                   clock: Callable[[], float] = time.perf_counter, framework: str = "torch") -> dict[str, Any]:
    """Time every swept op class on this machine in ``framework`` (torch or keras) and fit a
    profile; its JSON document.

    Returns
    -------
    dict
        :func:`~morphscope.analyzers.hardware.profile_doc`: per class ``s_per_gflop``,
        ``s_per_gb``, ``overhead_s``; ``default`` fitted on all points; how it was measured
        (device, framework and its version, threads, batch) and the fit's mean absolute
        percentage error.
    """
    timing_of = framework_timing(framework)
    ops = list(sweep())
    points: dict[str, list[tuple[float, float, float]]] = {}
    with timing_of.threads(threads) as used:
        for done, (cls, op, shape) in enumerate(ops):
            model = timing_of.build_op(op, shape)
            flops, moved = op_work(timing_of.load(model, shape, cls), cls)
            timing = timing_of.time(model, shape, batch, runs, 2, device, clock, cold=True)
            points.setdefault(cls, []).append((flops, moved, timing.median_s))
            if progress:
                progress(done + 1, len(ops))
        classes, errors = {}, []
        for cls, rows in {**points, DEFAULT_CLASS: [p for rows in points.values() for p in rows]}.items():
            flops, moved, seconds = (np.array(col) for col in zip(*rows))
            classes[cls] = fit_class(flops, moved, seconds, batch)
            if cls != DEFAULT_CLASS:
                t = classes[cls]
                predicted = t.overhead_s + batch * (flops * t.s_per_gflop + moved * t.s_per_gb) / 1e9
                errors.extend(np.abs(predicted - seconds) / seconds)
        scale, per_op_s = _network_calibration(timing_of, classes, batch, runs, device, clock)
    classes = {cls: ClassTimes(t.s_per_gflop * scale, t.s_per_gb * scale, t.overhead_s * scale + per_op_s)
               for cls, t in classes.items()}
    return profile_doc(name, classes, batch, device=machine_name(device), framework=timing_of.name,
                       threads=used, dtype="float32", **timing_of.version(),
                       points=sum(map(len, points.values())), mape=float(np.mean(errors)),
                       network_scale=scale, network_per_op_s=per_op_s, created=time.strftime("%Y-%m-%d"))


CALIBRATION_NETWORKS = ("residual", "inverted")
CALIBRATION_SIDES = (128, 192)


def torch_network(name: str) -> Any:
    """The PyTorch build of a calibration network (:data:`CALIBRATION_NETWORKS`), not any
    model a user predicts: ``residual``, a stack of 3x3 residual blocks, or ``inverted``, a
    stack of 1x1 / depthwise inverted residuals with squeeze-excitation gates."""
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return (x + self.body(x)).relu()

    class Inverted(nn.Module):
        def __init__(self, c: int, k: int) -> None:
            super().__init__()
            e = 4 * c
            self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.SiLU(),
                                        nn.Conv2d(e, e, k, padding=k // 2, groups=e, bias=False),
                                        nn.BatchNorm2d(e), nn.SiLU())
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(e, c // 2, 1), nn.SiLU(),
                                      nn.Conv2d(c // 2, e, 1), nn.Sigmoid())
            self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            y = self.expand(x)
            return x + self.project(y * self.gate(y))

    if name == "residual":
        return nn.Sequential(nn.Conv2d(3, 48, 3, 2, 1), *[Residual(48) for _ in range(2)],
                             nn.Conv2d(48, 96, 3, 2, 1), *[Residual(96) for _ in range(2)],
                             nn.Conv2d(96, 192, 3, 2, 1), Residual(192), nn.AdaptiveAvgPool2d(1))
    return nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), *[Inverted(24, 3) for _ in range(2)],
                         nn.Conv2d(24, 40, 3, 2, 1), *[Inverted(40, 5) for _ in range(2)],
                         nn.Conv2d(40, 80, 3, 2, 1), *[Inverted(80, 3) for _ in range(2)],
                         nn.AdaptiveAvgPool2d(1))


def _network_calibration(timing_of: FrameworkTiming, classes: dict[str, ClassTimes], batch: int, runs: int,
                         device: str, clock: Callable[[], float]) -> tuple[float, float]:
    """Ops timed alone run faster than inside a network (their inputs come from the op before;
    a network's modules and containers add calls): the scale and the added seconds per op,
    ``measured = scale x predicted + per_op x ops``, fitted (non-negative) on the calibration
    networks at two resolutions, none of them a model users predict."""
    from scipy.optimize import nnls

    from morphscope.analyzers.hardware import profile_from_doc
    from morphscope.analyzers.widths import compile_width_model

    hardware = profile_from_doc(profile_doc("fit", classes, batch), "fit")
    rows, measured = [], []
    for name in CALIBRATION_NETWORKS:
        for side in CALIBRATION_SIDES:
            network = timing_of.build_network(name, side)
            model = compile_width_model(timing_of.load(network, (3, side, side), name))
            per_op = model.per_op(model.seed_widths)
            ops = int(np.count_nonzero(2 * per_op["macs"] + per_op["bytes_moved"]))
            rows.append((model.target_cost(model.seed_widths, "latency", hardware), ops))
            measured.append(timing_of.time(network, (3, side, side), batch, runs, 3, device, clock).median_s)
    weights = 1.0 / np.array(measured)  # relative error, as the class fits
    (scale, per_op_s), _ = nnls(np.array(rows, dtype=float) * weights[:, None], np.array(measured) * weights)
    return float(scale), float(per_op_s)


def mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean absolute percentage error (a fraction: 0.1 is 10%)."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    return float(np.mean(np.abs(predicted - measured) / measured))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def speedup(seed_s: float, morphed_s: float) -> float:
    """How many times faster the morphed model is (seed time / morphed time)."""
    return seed_s / morphed_s if morphed_s > 0 else math.inf
