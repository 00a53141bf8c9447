"""Keras' part of measured latency: the profile's swept ops and calibration networks built as
Keras layers count what their PyTorch builds count (those are checked against the frameworks
elsewhere), a Keras forward pass is timed by the one timing loop (a fake clock, no timing),
and ``morphscope.measure`` rebuilds and times a Keras model."""

from __future__ import annotations

import pytest

from morphscope.exporters.keras_timing import keras_network, keras_op, measure_keras
from morphscope.exporters.timing import SweepOp, op_work, sweep, torch_network, torch_op
from morphscope.importers.keras_importer import load_keras_model


class FakeClock:
    """Each call of the timed function takes the next of ``durations`` seconds."""

    def __init__(self, durations):
        self.durations, self.now, self.reads = list(durations), 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:
            self.now += self.durations.pop(0)
        return self.now


def _one_of_each():
    seen = {}
    for cls, op, shape in sweep():
        seen.setdefault((cls, op.kind, op.act, len(shape)), (cls, op, shape))
    return list(seen.values())


@pytest.mark.parametrize("cls, op, shape", _one_of_each(), ids=lambda v: str(v) if isinstance(v, str) else None)
def test_each_swept_keras_op_counts_what_its_torch_build_counts(cls, op, shape):
    from morphscope.importers.torch_importer import load_module

    keras_work = op_work(load_keras_model(keras_op(op, shape)), cls)
    torch_work = op_work(load_module(torch_op(op), shape, name=cls), cls)
    assert keras_work == torch_work


def test_a_swept_conv_counts_its_multiply_adds():
    op = SweepOp("conv", 48, 24, 3)
    flops, _ = op_work(load_keras_model(keras_op(op, (48, 7, 7))), "conv")
    assert flops == 2 * 7 * 7 * 3 * 3 * 48 * 24  # 2 FLOPs per multiply-add, 'same' padding keeps 7x7


# Batch-norm channels of each calibration network: residual, 2 bn per block over blocks of 48,
# 48, 96, 96, 192 channels; inverted, per block 4c (expand) + 4c (depthwise) + c (project) over
# two blocks each of 24, 40 and 80 channels.
BN_CHANNELS = {"residual": 2 * (48 + 48 + 96 + 96 + 192), "inverted": 2 * 9 * (24 + 40 + 80)}


@pytest.mark.parametrize("name", ["residual", "inverted"])
def test_calibration_networks_count_alike_in_both_frameworks(name):
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.torch_importer import load_module

    keras_totals, torch_totals = (
        compile_width_model(graph).totals(compile_width_model(graph).seed_widths)
        for graph in (load_keras_model(keras_network(name, 64)), load_module(torch_network(name), (3, 64, 64))))
    for key in ("macs", "bytes_moved", "size"):  # what latency is predicted from
        assert keras_totals[key] == torch_totals[key]
    # Keras counts a bn's moving mean and variance among its weights, PyTorch as buffers.
    assert keras_totals["params"] - torch_totals["params"] == 2 * BN_CHANNELS[name]


def test_measure_keras_times_the_forward_pass_by_the_timing_loop():
    model = keras_op(SweepOp("conv", 3, 13, 3), (3, 17, 19))
    timing = measure_keras(model, (3, 17, 19), batch=2, runs=3, warmup=1,
                           clock=FakeClock([0.5, 0.125, 0.25] + [0.25] * 20))
    assert timing.median_s == 0.25 and timing.max_s == 0.5 and timing.runs == 3
    assert timing.threads >= 1


def test_measure_rebuilds_and_times_a_keras_model_and_refuses_a_torch_profile(tmp_path):
    import json

    import keras

    import morphscope
    from morphscope.analyzers.hardware import ClassTimes, profile_doc
    from morphscope.errors import MorphScopeError

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(8, 3, name="conv")(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(keras.layers.GlobalAveragePooling2D()(x)))
    result = morphscope.measure(model, {"conv": 3}, runs=2)  # conv keeps 3 of its 8 channels
    assert set(result) >= {"seed", "morphed", "speedup_measured", "speedup_predicted", "threads"}
    assert result["morphed"]["measured_s"] > 0 and result["threads"] >= 1
    doc = profile_doc("torch-cpu", {"default": ClassTimes(1e-3, 1e-3, 1e-6)}, 1, framework="torch")
    (tmp_path / "torch-cpu.json").write_text(json.dumps(doc))
    with pytest.raises(MorphScopeError, match="measured with torch; profile this machine with --framework keras"):
        morphscope.measure(model, {"conv": 3}, runs=2, hardware=str(tmp_path / "torch-cpu.json"))
