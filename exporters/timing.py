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


def measure_model(module: Any, input_shape: tuple[int, ...], batch: int = 1, threads: int | None = None,
                  runs: int = 20, warmup: int = 5, device: str = "cpu",
                  clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Seconds per forward pass of a PyTorch module (eval mode, no autograd) on a zero input
    of ``(batch, *input_shape)``, at ``threads`` intra-op threads."""
    import torch

    module = module.eval().to(device)
    x = torch.zeros((batch, *input_shape), device=device)

    def call() -> None:
        module(x)
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

def _sweep_modules() -> Iterator[tuple[str, Any, tuple[int, ...]]]:
    """(class, module, input shape) of the ops a profile times: widths 8..256, maps 7..56."""
    from torch import nn

    class Binary(nn.Module):
        def __init__(self, op: str) -> None:
            super().__init__()
            self.op = op

        def forward(self, x):
            import torch

            return {"add": lambda: x + x, "mul": lambda: x * x, "concat": lambda: torch.cat([x, x], 1)}[self.op]()

    for c in (16, 32, 64, 128, 256):
        for side in (7, 14, 28, 56):
            if c * c * side * side > 2 ** 25:
                continue
            for cout in (c // 2, c, 2 * c):
                yield "conv", nn.Conv2d(c, cout, 3, padding=1, bias=False), (c, side, side)
                yield "conv_1x1", nn.Conv2d(c, cout, 1, bias=False), (c, side, side)
            yield "conv_depthwise", nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), (c, side, side)
            yield "conv_grouped", nn.Conv2d(c, c, 3, padding=1, groups=8, bias=False), (c, side, side)
            yield "bn", nn.BatchNorm2d(c), (c, side, side)
            yield "act", nn.ReLU(), (c, side, side)
            for op in ("add", "mul", "concat"):
                yield op, Binary(op), (c, side, side)
            yield "pool", nn.MaxPool2d(3, 2, 1), (c, side, side)
            yield "global_pool", nn.AdaptiveAvgPool2d(1), (c, side, side)
        for cout in (c, 4 * c):
            yield "linear", nn.Linear(c, cout), (c,)


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
            timing = measure_model(module, shape, batch, None, runs, 2, device, clock)
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
    return profile_doc(name, classes, batch, device=machine_name(device), framework="torch",
                       threads=used, dtype="float32", torch=torch.__version__,
                       points=sum(map(len, points.values())), mape=float(np.mean(errors)),
                       created=time.strftime("%Y-%m-%d"))


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
