"""The public API (morphscope.report/expand/export/load_model/load_structure) on the bundled example."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import morphscope
from morphscope.errors import MorphScopeError

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "examples" / "digits" / "flops_gammas.pt"


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'reprot'"):
        morphscope.reprot  # noqa: B018 - the lookup is the test


def test_export_refuses_a_model_out_that_names_its_checkpoint(tmp_path):
    ckpt = tmp_path / "gammas.pt"
    shutil.copy(CKPT, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(MorphScopeError, match="would overwrite"):
        morphscope.export("example:digits", ckpt, model_out=ckpt)
    assert ckpt.read_bytes() == before


def test_export_needs_the_model_to_rebuild(tmp_path):
    graph = morphscope.load_model("example:digits")
    with pytest.raises(TypeError, match="needs the model itself"):
        morphscope.export(graph, CKPT, model_out=tmp_path / "m.pt2")


def test_export_writes_a_rebuilt_model_whose_count_matches_the_prediction(tmp_path):
    out = morphscope.export("example:digits", CKPT, model_out=tmp_path / "morphed.pt2")
    assert (tmp_path / "morphed.pt2").stat().st_size > 0
    assert out["model_params"] == out["predicted_params"]
    # The table's expanded widths are the widths written (no multiplier: alive widths).
    assert {row["layer"]: row["expanded_width"] for row in out["table"]} == out["widths"]


def test_load_structure_reads_the_examples_gammas():
    structure = morphscope.load_structure("example:digits", CKPT)
    # The example's bn layers (train_digits.py): every bn module has a gamma vector.
    assert structure.gammas and all(v.ndim == 1 for v in structure.gammas.values())


def test_the_api_takes_what_a_notebook_has_in_hand():
    import torch
    import torchvision

    module = torchvision.models.resnet18()
    doc = morphscope.report(module, example_input=torch.zeros(1, 3, 224, 224))
    assert doc["seed"]["macs"] == 1814073344  # torchvision's published 1.81 GFLOPS (MACs)
    assert morphscope.report(module, torch.zeros(1, 3, 224, 224))["seed"] == doc["seed"]  # as the issue writes it
    assert doc["seed"]["params"] == sum(p.numel() for p in module.parameters())
    one = morphscope.report("example:digits", checkpoints=str(CKPT))  # one path, not a list
    assert [m["checkpoint"] for m in one["morphed"]] == [str(CKPT)]
    state = torch.load(CKPT, weights_only=True)
    from_state = morphscope.load_structure("example:digits", state)
    assert from_state.gammas.keys() == morphscope.load_structure("example:digits", CKPT).gammas.keys()
    with pytest.raises(MorphScopeError, match="torchvision:resnet18 or keras:resnet18"):
        morphscope.report("resnet18")
    assert {"report", "expand", "export", "rebuild", "load_model", "load_structure"} <= set(dir(morphscope))


def test_python_dash_m_morphscope_runs_the_cli():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "morphscope", "report", "example:digits", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert '"seed"' in done.stdout
