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
# examples/train_digits.py: stem and res1 run at 16x16, pointwise and res2 at 4x4 (their
# output maps; the digits are upsampled to 16x16 and downsampled twice by stride 2).
EARLY = ("stem.0", "res1.conv1.0", "res1.conv2.0")
LATE = ("pointwise.0", "res2.conv1.0", "res2.conv2.0")


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


def test_flop_targeting_keeps_far_fewer_early_channels(shares):
    # The bar: at least 20 points less of the highest-resolution layers.
    assert shares["size-regularized"]["early"] - shares["FLOPs-regularized"]["early"] >= 0.20


def test_size_targeting_keeps_fewer_late_channels(shares):
    # The bar: at least 20 points less of the 4x4 layers (size targeting also cuts the
    # tied 150-wide residual stream, pointwise.0 / res2.conv2.0, which FLOP targeting keeps whole).
    assert shares["FLOPs-regularized"]["late"] - shares["size-regularized"]["late"] >= 0.20


def test_the_structures_differ_on_several_layers():
    graph = load_model("example:digits")
    model = compile_width_model(graph)
    seed = source_op_widths(graph, model, model.seed_widths)
    flops, size = (source_op_widths(graph, model, morph(model, load_structure(graph, path)).widths)
                   for path in example_checkpoints("example:digits").values())
    prunable = [n for n in seed if n != "fc"]  # the logits are pinned
    differ = [n for n in prunable if abs(flops[n] - size[n]) >= 0.15 * seed[n]]
    assert len(prunable) == 11 and len(differ) >= 6  # the bar: at least half


def test_committed_results_table():
    rows = json.loads((ROOT / "examples" / "digits" / "results.json").read_text())
    assert [r["structure"].split(" ")[0] for r in rows] == [
        "seed", "flops-regularized", "flops-expanded", "size-regularized", "size-expanded"]
    seed = rows[0]
    assert rows[1]["flops"] < seed["flops"] and rows[3]["params"] < seed["params"]
    assert 0.99 * seed["flops"] <= rows[2]["flops"] <= seed["flops"]  # expanded back under the seed's FLOPs
    # The harder task keeps every accuracy off the ceiling (and well above chance, 0.1).
    assert all(0.7 < r["accuracy"] < 0.97 for r in rows)


def test_committed_width_sweep():
    doc = json.loads((ROOT / "examples" / "digits" / "width_sweep.json").read_text())
    points = doc["points"]
    for family in ("seed", "morphnet"):
        chosen = [p for p in points if p["family"] == family]
        assert len(chosen) >= 4 and all(len(p["accuracies"]) >= 3 for p in chosen)
        for p in chosen:
            mean = sum(p["accuracies"]) / len(p["accuracies"])
            var = sum((a - mean) ** 2 for a in p["accuracies"]) / (len(p["accuracies"]) - 1)
            assert p["mean"] == pytest.approx(mean) and p["std"] == pytest.approx(var ** 0.5)
    seed = {p["factor"]: p for p in points if p["family"] == "seed"}
    for p in points:
        if p["family"] == "morphnet":  # at most the scaled seed's FLOPs, within 4% (integer widths)
            assert 0.96 * seed[p["factor"]]["flops"] <= p["flops"] <= seed[p["factor"]]["flops"]
    assert len(doc["runs"]) == sum(len(p["accuracies"]) for p in points) and doc["seconds"] > 0


def test_the_script_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "examples" / "train_digits.py"),
                             "--epochs", "1", "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "size-expanded" in result.stdout
    assert {p.name for p in tmp_path.iterdir()} >= {"seed.pt2", "flops_gammas.pt", "size_gammas.pt",
                                                    "results.json"}


def test_width_sweep_summary_is_mean_and_sample_spread():
    import importlib.util

    spec = importlib.util.spec_from_file_location("width_sweep_digits", ROOT / "examples" / "width_sweep_digits.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    runs = [{"family": f, "factor": w, "multiplier": w, "seed": s, "flops": 100, "params": 10,
             "accuracy": 0.8 + 0.01 * s} for f in sweep.FAMILIES for w in sweep.FACTORS for s in (0, 1, 2)]
    [first, *_] = sweep.summarize(runs)
    # 0.80, 0.81, 0.82: mean 0.81, sample standard deviation sqrt((0.01^2 + 0 + 0.01^2) / 2) = 0.01.
    assert first["accuracies"] == pytest.approx([0.8, 0.81, 0.82])
    assert first["mean"] == pytest.approx(0.81) and first["std"] == pytest.approx(0.01)
