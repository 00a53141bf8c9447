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
