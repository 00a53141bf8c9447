"""Runs as numbers (widths, shares, costs per step) and channels kept per output resolution,
on the bundled digits example (examples/train_digits.py):

    16x16: stem.0 28 -> res1.conv1.0 36 -> res1.conv2.0 28 (+ stem: one tied space)
    8x8:   down.0 60 -> inception: branch1 30, branch3_reduce 22 -> branch3 34, branch_pool 14
    4x4:   depthwise 78 -> pointwise.0 150 -> res2.conv1.0 170 -> res2.conv2.0 150 (tied) -> fc 10
"""

import numpy as np
import pytest

from morphscope.analyzers.resolution import kept_by_resolution, layer_resolutions, resolution_label
from morphscope.analyzers.runs import (costs_per_step, final_metric, layer_shares, log_target, metric_names,
                                       thin_indices, widths_per_step)
from morphscope.analyzers.widths import compile_width_model
from morphscope.importers.load import load_model

SEED = {"stem.0": 28, "res1.conv1.0": 36, "res1.conv2.0": 28, "down.0": 60, "inception.branch1.0": 30,
        "inception.branch3_reduce.0": 22, "inception.branch3.0": 34, "inception.branch_pool.0": 14,
        "pointwise.0": 150, "res2.conv1.0": 170, "res2.conv2.0": 150, "fc": 10}


@pytest.fixture(scope="module")
def digits():
    graph = load_model("example:digits")
    return graph, compile_width_model(graph)


def test_shares_and_costs_per_step(digits):
    graph, model = digits
    steps = [dict(SEED), {**SEED, "res2.conv1.0": 40, "inception.branch1.0": 8}]
    widths = widths_per_step(model, steps)
    shares = layer_shares(graph, model, widths)
    assert shares["layers"] == list(SEED)  # input to output; the depthwise conv is no source op
    assert shares["seed"] == list(SEED.values())
    row = shares["layers"].index("res2.conv1.0")
    assert shares["shares"][row].tolist() == [1.0, 40 / 170]
    costs = costs_per_step(model, widths)
    seed_macs = costs["macs"][0]
    # Saved MACs (4x4 = 16 pixels, 8x8 = 64): res2.conv1 out and res2.conv2 in (3x3, 150 wide),
    # branch1 out (1x1 from 60), the depthwise 3x3 on 22 fewer channels, pointwise 1x1 in (150 out).
    saved = 9 * 16 * 150 * 130 * 2 + 64 * 60 * 22 + 9 * 16 * 22 + 16 * 22 * 150
    assert costs["flops"].tolist() == [2 * seed_macs, 2 * (seed_macs - saved)]
    # size: conv kernels only: res2.conv1/2 lose 9*150*130 each, branch1 60*22, depthwise 9*22,
    # pointwise 22*150.
    assert costs["size"][0] - costs["size"][1] == 2 * 9 * 150 * 130 + 60 * 22 + 9 * 22 + 22 * 150


def test_kept_by_resolution_highest_first(digits):
    graph, model = digits
    widths = widths_per_step(model, [{**SEED, "res1.conv1.0": 9, "res2.conv1.0": 40}])[0]
    kept = kept_by_resolution(graph, model, {"s": widths})
    assert kept["resolutions"] == ["16x16", "8x8", "4x4"]  # fc (pinned logits) is not prunable
    assert kept["seed_channels"] == [28 + 36 + 28, 60 + 30 + 22 + 34 + 14, 150 + 170 + 150]
    assert kept["shares"]["s"] == pytest.approx([(28 + 9 + 28) / 92, 1.0, (150 + 40 + 150) / 470])


def test_resolution_labels(digits):
    graph, _ = digits
    assert layer_resolutions(graph, ["stem.0", "down.0", "res2.conv1.0", "fc"]) == ["16x16", "8x8", "4x4", "vector"]
    assert resolution_label((7, 9, 11)) == "7x9x11"


def test_thin_indices_keep_ends_and_bound():
    drawn = thin_indices(1000, 400)
    assert len(drawn) <= 400 and drawn[0] == 0 and drawn[-1] == 999 and np.all(np.diff(drawn) > 0)
    assert thin_indices(7, 400).tolist() == list(range(7))


def test_log_readers():
    log = [{"step": 0, "cost": 9.0, "loss": 1.0, "val_accuracy": 0.5},
           {"step": 10, "target": "size", "cost": 5.0, "loss": None, "val_accuracy": None, "note": "x"}]
    assert metric_names(log) == ["val_accuracy"]
    assert final_metric(log, "val_accuracy") == 0.5  # the last record's is missing
    assert final_metric(log, "top5") is None
    assert log_target(log) == "size" and log_target([]) == "flops"
