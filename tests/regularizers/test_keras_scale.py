"""The Keras regularizer in compiled ``fit`` (graph, ``jit_compile=True``, MirroredStrategy on
2 logical CPU devices), attached before ``compile`` and after an earlier ``fit``; costs
checked against ``morphscope report`` on the weights saved after ``fit`` with Adam.

One run of ``keras_worker.py`` in a fresh interpreter serves all the tests here (logical
devices must be configured before TensorFlow starts).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from morphscope.cli.main import main as morphscope_main
from workers import run_worker

WORKER = Path(__file__).with_name("keras_worker.py")
FITS = ["compiled", "jit", "mirrored"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras")
    run_worker(WORKER, out)
    return out, json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("fit", FITS)
def test_fit_runs_compiled_with_the_regularizer_and_the_loss_falls(run, fit):
    _, result = run
    record = result[fit]
    assert record["run_eagerly"] is False
    assert record["jit_compile"] is (fit == "jit")
    assert record["replicas"] == (2 if fit == "mirrored" else 1)
    assert record["losses"][-1] < record["losses"][0]


@pytest.mark.parametrize("fit", FITS)
def test_cost_after_fit_equals_morphscope_report_on_the_saved_weights(run, fit, capsys):
    out, result = run
    # Weights saved after fit with Adam carry optimizer variables besides the layers.
    assert morphscope_main(["report", str(out / "residual.keras"), "--checkpoint",
                            str(out / f"{fit}.weights.h5"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["morphed"][0]["flops"] == result[fit]["cost"]


def test_the_logger_callback_writes_every_other_batch(run):
    out, result = run
    run_dir = out / "compiled_run"
    # 16 samples / batch 8 = 2 batches x 6 epochs = steps 0..11, every 2.
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        [f"alive_{s}" for s in range(0, 12, 2)] + ["cost.jsonl"])
    lines = [json.loads(line) for line in (run_dir / "cost.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(0, 12, 2))
    # Every logged cost is an alive cost: at most the seed's (all alive before fit).
    assert all(0 < line["cost"] <= result["compiled"]["start_cost"] and line["loss"] > 0 for line in lines)


@pytest.mark.parametrize("when", ["before_compile", "after_fit"])
def test_attached_term_reaches_the_gradients(run, when):
    # One full-batch SGD step (lr 0.1) with and without the term from the same weights:
    # the gamma difference is lr * strength * dG/dgamma, dG taken with tf.GradientTape.
    _, result = run
    for expected, seen in zip(result[when]["expected"], result[when]["seen"]):
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(seen, expected, rtol=1e-3, atol=1e-6)


def test_the_keras_path_imports_no_torch(run):
    _, result = run
    assert result["torch_imported"] == []
