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


def measure_model(module: Any, input_shape: tuple[int, ...], batch: int = 1, threads: int | None = None,
                  runs: int = 20, warmup: int = 5, device: str = "cpu",
                  clock: Callable[[], float] = time.perf_counter, cold: bool = False) -> Timing:
    """Seconds per forward pass of a PyTorch module (eval mode, no autograd) on a random
    input of ``(batch, *input_shape)``, at ``threads`` intra-op threads. ``cold``: each call
    reads another copy of the input (up to :data:`COLD_BYTES` of them in turn), as an op in a
    network reads what the op before it wrote, not what sat in cache since the last call."""
    import torch

    module = module.eval().to(device)
    numel = batch * math.prod(input_shape)
    copies = max(1, min(64, COLD_BYTES // (4 * numel))) if cold else 1
    inputs = [torch.randn((batch, *input_shape), device=device) for _ in range(copies)]
    turn = iter(range(1 << 62))

    def call() -> None:
        module(inputs[next(turn) % copies])
        if device != "cpu":
            torch.cuda.synchronize()

    with torch.inference_mode(), torch_threads(threads) as used:
        timing = time_call(call, runs, warmup, min_time_s=0.2, clock=clock)
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

    Raises
    ------
    MorphScopeError
        A Keras model (timing is PyTorch's), or a profile measured at another batch.
    """
    from morphscope.analyzers.morph import plan_totals
    from morphscope.errors import MorphScopeError
    from morphscope.exporters.export import runnable_module

    if hardware.is_profile and hardware.batch != batch:
        raise MorphScopeError(f"{hardware.name}: the profile was measured at batch {hardware.batch}; "
                              f"measure at batch {hardware.batch}, or profile this machine at batch {batch}")
    if graph.framework != "torch":
        raise MorphScopeError(f"{graph.name}: measured latency times PyTorch models; a Keras model is not timed here")
    scale = 1 if hardware.is_profile else batch  # a roofline predicts one image; a profile its own batch
    out: dict[str, Any] = {"model": graph.name, "machine": machine_name(device), "batch": batch, "runs": runs,
                           "device": device, "hardware": hardware.name,
                           "prediction": hardware.prediction + ("" if hardware.is_profile else f", x batch {batch}")}
    rows = {"seed": (None, model.target_cost(model.seed_widths, "latency", hardware))}
    if plan is not None:
        rows["morphed"] = (plan, plan_totals(model, plan, hardware)["latency_s"])
    for label, (row_plan, predicted) in rows.items():
        if progress:
            progress(f"rebuilding and timing the {label} model")
        module = runnable_module(source, graph, model, row_plan)
        timing = measure_model(module, graph.input_shape, batch, threads, runs, device=device)
        out[label] = {"measured_s": timing.median_s, "min_s": timing.min_s, "max_s": timing.max_s,
                      "predicted_s": predicted * scale, "error": predicted * scale / timing.median_s - 1}
        out["threads"] = timing.threads
    if plan is not None:
        out["speedup_measured"] = speedup(out["seed"]["measured_s"], out["morphed"]["measured_s"])
        out["speedup_predicted"] = speedup(out["seed"]["predicted_s"], out["morphed"]["predicted_s"])
    return out


# -- the profile: each op class timed over a sweep, times fitted --------------------------------

SWEEP_SIDES = (7, 14, 28, 56, 112)
SWEEP_CHANNELS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
MAX_SWEEP_INPUT = 1 << 21  # channels x pixels of one swept input (8 MB of float32)


def _sweep_modules() -> Iterator[tuple[str, Any, tuple[int, ...]]]:
    """(class, module, input shape) of the ops a profile times: the widths and resolutions of
    common CNNs (16-512 channels, 7x7 to 112x112 maps, inputs up to 2^21 values)."""
    from torch import nn

    class Binary(nn.Module):
        def __init__(self, op: str) -> None:
            super().__init__()
            self.op = op

        def forward(self, x):
            import torch

            return {"add": lambda: x + x, "mul": lambda: x * x, "concat": lambda: torch.cat([x, x], 1)}[self.op]()

    acts = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Sigmoid)
    for side in SWEEP_SIDES:
        for n, c in enumerate(ch for ch in SWEEP_CHANNELS if 2 ** 11 <= ch * side * side <= MAX_SWEEP_INPUT):
            shape = (c, side, side)
            for cout in (c // 2, c, 2 * c, 4 * c):
                if cout * side * side <= 2 * MAX_SWEEP_INPUT:
                    yield "conv_1x1", nn.Conv2d(c, cout, 1, bias=False), shape
            for cout in (c // 2, c, 2 * c):
                if c * cout * side * side <= 2 ** 27:
                    yield "conv", nn.Conv2d(c, cout, 3, padding=1, bias=False), shape
            for k, stride in ((3, 1), (5, 1), (3, 2), (5, 2)):
                yield "conv_depthwise", nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False), shape
            groups = next(g for g in (8, 7, 5, 3, 1) if c % g == 0)
            if groups > 1:
                yield "conv_grouped", nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False), shape
            yield "bn", nn.BatchNorm2d(c), shape
            yield "act", acts[n % len(acts)](), shape
            for op in ("add", "mul", "concat"):
                yield op, Binary(op), shape
            yield "pool", nn.MaxPool2d(3, 2, 1), shape
            yield "global_pool", nn.AdaptiveAvgPool2d(1), shape
    for c in SWEEP_CHANNELS:
        for cout in (c // 4, c, 4 * c):
            yield "linear", nn.Linear(c, cout), (c,)
        yield "conv_1x1", nn.Conv2d(c, c // 4, 1), (c, 1, 1)  # squeeze-excitation convs on 1x1 maps
        yield "act", acts[c % len(acts)](), (c, 1, 1)
        yield "mul", Binary("mul"), (c, 1, 1)


def _op_work(module: Any, input_shape: tuple[int, ...], cls: str) -> tuple[float, float]:
    """FLOPs and bytes moved per image of the swept op, as the cost model counts them."""
    from morphscope.analyzers.cost import latency_class
    from morphscope.analyzers.resources import FLOPS_PER_MAC
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.torch_importer import load_module

    graph = load_module(module, input_shape, name=cls)
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


def profile_device(name: str, batch: int = 1, threads: int | None = None, device: str = "cpu",
                   runs: int = 10, progress: Callable[[int, int], None] | None = None,
                   clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time every swept op class on this machine and fit a profile; its JSON document.

    Returns
    -------
    dict
        :func:`~morphscope.analyzers.hardware.profile_doc`: per class ``s_per_gflop``,
        ``s_per_gb``, ``overhead_s``; ``default`` fitted on all points; how it was measured
        (device, threads, batch, torch version) and the fit's mean absolute percentage error.
    """
    import torch

    sweep = list(_sweep_modules())
    points: dict[str, list[tuple[float, float, float]]] = {}
    with torch_threads(threads) as used:
        for done, (cls, module, shape) in enumerate(sweep):
            flops, moved = _op_work(module, shape, cls)
            timing = measure_model(module, shape, batch, None, runs, 2, device, clock, cold=True)
            points.setdefault(cls, []).append((flops, moved, timing.median_s))
            if progress:
                progress(done + 1, len(sweep))
    classes, errors = {}, []
    for cls, rows in {**points, DEFAULT_CLASS: [p for rows in points.values() for p in rows]}.items():
        flops, moved, seconds = (np.array(col) for col in zip(*rows))
        classes[cls] = fit_class(flops, moved, seconds, batch)
        if cls != DEFAULT_CLASS:
            t = classes[cls]
            predicted = t.overhead_s + batch * (flops * t.s_per_gflop + moved * t.s_per_gb) / 1e9
            errors.extend(np.abs(predicted - seconds) / seconds)
    with torch_threads(threads):
        scale, per_op_s = _network_calibration(classes, batch, runs, device, clock)
    classes = {cls: ClassTimes(t.s_per_gflop * scale, t.s_per_gb * scale, t.overhead_s * scale + per_op_s)
               for cls, t in classes.items()}
    return profile_doc(name, classes, batch, device=machine_name(device), framework="torch",
                       threads=used, dtype="float32", torch=torch.__version__,
                       points=sum(map(len, points.values())), mape=float(np.mean(errors)),
                       network_scale=scale, network_per_op_s=per_op_s, created=time.strftime("%Y-%m-%d"))


def _calibration_networks() -> Iterator[tuple[str, Any]]:
    """Two synthetic networks, not any model a user predicts: a residual stack of 3x3 convs
    and an inverted-residual stack of 1x1 / depthwise convs with squeeze-excitation gates."""
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

    yield "residual", nn.Sequential(nn.Conv2d(3, 48, 3, 2, 1), *[Residual(48) for _ in range(2)],
                                    nn.Conv2d(48, 96, 3, 2, 1), *[Residual(96) for _ in range(2)],
                                    nn.Conv2d(96, 192, 3, 2, 1), Residual(192), nn.AdaptiveAvgPool2d(1))
    yield "inverted", nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), *[Inverted(24, 3) for _ in range(2)],
                                    nn.Conv2d(24, 40, 3, 2, 1), *[Inverted(40, 5) for _ in range(2)],
                                    nn.Conv2d(40, 80, 3, 2, 1), *[Inverted(80, 3) for _ in range(2)],
                                    nn.AdaptiveAvgPool2d(1))


def _network_calibration(classes: dict[str, ClassTimes], batch: int, runs: int, device: str,
                         clock: Callable[[], float]) -> tuple[float, float]:
    """Ops timed alone run faster than inside a network (their inputs come from the op before;
    a network's modules and containers add Python calls): the scale and the added seconds per
    op, ``measured = scale x predicted + per_op x ops``, fitted (non-negative) on the
    :func:`_calibration_networks` at two resolutions, none of them a model users predict."""
    from scipy.optimize import nnls

    from morphscope.analyzers.hardware import profile_from_doc
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.torch_importer import load_module

    hardware = profile_from_doc(profile_doc("fit", classes, batch), "fit")
    rows, measured = [], []
    for name, network in _calibration_networks():
        for side in (128, 192):
            model = compile_width_model(load_module(network, (3, side, side), name=name))
            per_op = model.per_op(model.seed_widths)
            ops = int(np.count_nonzero(2 * per_op["macs"] + per_op["bytes_moved"]))
            rows.append((model.target_cost(model.seed_widths, "latency", hardware), ops))
            measured.append(measure_model(network, (3, side, side), batch, None, runs, 3, device, clock).median_s)
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
