"""The committed digits example: FLOP targeting cuts early layers, size targeting late ones."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from morphscope.analyzers.morph import morph, source_op_widths
from morphscope.analyzers.widths import compile_width_model
from morphscope.importers.checkpoints import load_structure
from morphscope.importers.load import example_checkpoints, load_model

ROOT = Path(__file__).resolve().parents[2]
# examples/train_digits.py: stem and res1 run at 16x16, pointwise and res2 at 4x4.
EARLY = ("stem.0", "res1.conv1.0")
LATE = ("pointwise.0", "res2.conv1.0")


@pytest.fixture(scope="module")
def shares():
    graph = load_model("example:digits")
    model = compile_width_model(graph)
    seed = source_op_widths(graph, model, model.seed_widths)
    out = {}
    for label, path in example_checkpoints("example:digits").items():
        widths = source_op_widths(graph, model, morph(model, load_structure(graph, path)).widths)
        out[label] = {part: sum(widths[n] for n in layers) / sum(seed[n] for n in layers)
                      for part, layers in (("early", EARLY), ("late", LATE))}
    return out


def test_flop_targeting_keeps_fewer_early_channels(shares):
    assert shares["FLOPs-regularized"]["early"] < shares["size-regularized"]["early"]


def test_size_targeting_keeps_fewer_late_channels(shares):
    assert shares["size-regularized"]["late"] < shares["FLOPs-regularized"]["late"]


def test_committed_results_table():
    rows = json.loads((ROOT / "examples" / "digits" / "results.json").read_text())
    assert [r["structure"].split(" ")[0] for r in rows] == [
        "seed", "flops-regularized", "flops-expanded", "size-regularized", "size-expanded"]
    seed = rows[0]
    assert rows[1]["flops"] < seed["flops"] and rows[3]["params"] < seed["params"]
    assert rows[2]["flops"] <= seed["flops"]  # expanded back to (under) the seed's FLOPs
    assert all(r["accuracy"] > 0.9 for r in rows)


def test_the_script_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "examples" / "train_digits.py"),
                             "--epochs", "1", "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "size-expanded" in result.stdout
    assert {p.name for p in tmp_path.iterdir()} >= {"seed.pt2", "flops_gammas.pt", "size_gammas.pt",
                                                    "results.json"}
