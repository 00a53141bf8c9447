"""The timing code, on a fake clock (no timing in tests): warm-up, runs, median and spread;
the profile fit recovers known times; the error measures are the textbook ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morphscope.exporters.timing import fit_class, mape, measure_model, spearman, speedup, time_call


class FakeClock:
    """Each call of the timed function takes the next of ``durations`` seconds."""

    def __init__(self, durations):
        self.durations, self.now, self.reads = list(durations), 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:  # the read after a call: that call's duration has passed
            self.now += self.durations.pop(0)
        return self.now


def test_time_call_warms_up_then_takes_the_median_of_the_runs():
    calls = []
    timing = time_call(lambda: calls.append(1), runs=5, warmup=3, clock=FakeClock([5.0, 1.0, 3.0, 2.0, 4.0]))
    assert len(calls) == 3 + 5  # warm-up calls are made, not timed
    assert (timing.median_s, timing.min_s, timing.max_s, timing.runs) == (3.0, 1.0, 5.0, 5)


def test_time_call_runs_on_until_min_time_but_at_most_ten_times_the_runs():
    timing = time_call(lambda: None, runs=2, warmup=0, min_time_s=1.0, clock=FakeClock([0.25] * 10))
    assert timing.runs == 4  # 4 x 0.25 s reach the 1 s minimum
    timing = time_call(lambda: None, runs=2, warmup=0, min_time_s=100.0, clock=FakeClock([0.001] * 30))
    assert timing.runs == 20


def test_measure_model_times_a_forward_pass_at_the_threads_asked():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 13, 3), torch.nn.ReLU())
    before = torch.get_num_threads()
    timing = measure_model(module, (3, 17, 19), batch=2, threads=1, runs=3, warmup=1,
                           clock=FakeClock([0.5, 0.125, 0.25] + [0.25] * 20))
    assert timing.threads == 1 and torch.get_num_threads() == before  # restored after
    assert timing.median_s == 0.25 and timing.max_s == 0.5  # 3 runs: 0.875 s, over its 0.2 s minimum
    assert timing.runs == 3


def test_fit_class_recovers_known_times():
    # seconds = 4 us + batch 2 x (flops x 3 ms/GFLOP + bytes x 0.5 ms/GB), exactly
    flops = np.array([1e6, 5e6, 2e7, 8e7, 3e6])
    moved = np.array([4e5, 1e5, 9e6, 2e6, 7e6])
    seconds = 4e-6 + 2 * (flops * 3e-3 + moved * 0.5e-3) / 1e9
    fitted = fit_class(flops, moved, seconds, batch=2)
    assert fitted.s_per_gflop == pytest.approx(3e-3, rel=1e-6)
    assert fitted.s_per_gb == pytest.approx(0.5e-3, rel=1e-5)
    assert fitted.overhead_s == pytest.approx(4e-6, rel=1e-5)


def test_error_measures():
    assert mape([110.0, 90.0], [100.0, 100.0]) == pytest.approx(0.1)  # |10|/100 and |-10|/100
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert speedup(3.0, 1.5) == 2.0
