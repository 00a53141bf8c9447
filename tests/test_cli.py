"""The ``morphscope`` command, run as a user runs it: a subprocess of the installed script."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import pytest

MORPHSCOPE = [sys.executable, "-m", "morphscope.cli.main"]


def run_cli(*args, cwd=None):
    return subprocess.run([*MORPHSCOPE, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_report_torchvision_resnet50_json():
    import torchvision

    result = run_cli("report", "torchvision:resnet50", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert doc["seed"]["params"] == weights.meta["num_params"] == 25557032
    assert round(doc["seed"]["macs"] / 1e9, 3) == weights.meta["_ops"]  # 4.089 GFLOPS
    # FlopCounterMode's total for resnet50 at 224 (torch counts a multiply-add as 2 FLOPs).
    assert doc["seed"]["flops"] == 8_178_368_512
    assert {"macs", "flops", "params", "size"} <= set(doc["seed"])
    names = [row["name"] for row in doc["layers"]]
    assert names[0] == "conv1" and names[-1] == "fc"


def test_report_keras_resnet50_json():
    import keras

    result = run_cli("report", "keras:ResNet50", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["seed"]["params"] == keras.applications.ResNet50(weights=None).count_params()
    # Keras ResNet50 convs carry biases, torchvision's do not; the kernels are the same
    # except the stem (7*7*3*64 both) - so the morph-net size differs by the biases only.
    assert doc["layers"][0]["name"] == "conv1_conv"


def test_report_prints_a_table_with_totals():
    result = run_cli("report", "torchvision:resnet18")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[:3] == ["Layer", "Kind", "In"]
    assert any(line.startswith("conv1 ") and "118,013,952" in line for line in lines)
    assert "Params:       11,689,512" in result.stdout


def test_input_shape_option_changes_the_size():
    result = run_cli("report", "torchvision:resnet18", "--input-shape", "3,448,448", "--json")
    doc = json.loads(result.stdout)
    full = json.loads(run_cli("report", "torchvision:resnet18", "--json").stdout)
    # Twice the side: every conv output has 4x the pixels; fc (512*1000 MACs) is unchanged.
    assert doc["input_shape"] == [3, 448, 448]
    assert doc["seed"]["macs"] - 512 * 1000 == 4 * (full["seed"]["macs"] - 512 * 1000)


def expect_one_line_error(result, fragment):
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0]
    return lines[0]


def test_missing_path(tmp_path):
    path = tmp_path / "nope.pt2"
    line = expect_one_line_error(run_cli("report", str(path)), "no such file")
    assert str(path) in line


def test_empty_file(tmp_path):
    path = tmp_path / "empty.keras"
    path.write_bytes(b"")
    line = expect_one_line_error(run_cli("report", str(path)), "empty file")
    assert str(path) in line


def test_truncated_keras_file(tmp_path):
    from handbuilt import keras_tower_net

    whole = tmp_path / "whole.keras"
    keras_tower_net().save(whole)
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    line = expect_one_line_error(run_cli("report", str(truncated)), "not a readable zip archive")
    assert str(truncated) in line


def test_text_file_renamed_pt2(tmp_path):
    path = tmp_path / "notes.pt2"
    path.write_text("these are my notes, not a model\n")
    line = expect_one_line_error(run_cli("report", str(path)), "not a torch.export archive")
    assert str(path) in line


def test_zip_without_graph_renamed_pt2(tmp_path):
    path = tmp_path / "other.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    expect_one_line_error(run_cli("report", str(path)), "without models/model.json")


class _Payload:
    """Pickles to a call of os.system that would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_payload_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload(marker)}, f)
    # The payload is real: unpickling it without protection does create the marker.
    control = tmp_path / "control_ran"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()

    line = expect_one_line_error(run_cli("report", str(path)), "refused")
    assert "would run code" in line and "system" in line
    assert not marker.exists()


def test_unknown_zoo_name():
    line = expect_one_line_error(run_cli("report", "torchvision:resnet51"), "no such")
    assert "resnet50" in line  # the valid choices are listed


def test_bad_input_shape():
    expect_one_line_error(run_cli("report", "torchvision:resnet18", "--input-shape", "3,x"),
                          "expected positive integers")


@pytest.mark.parametrize("suffix", [".onnx", ".txt"])
def test_unknown_suffix(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_text("x")
    expect_one_line_error(run_cli("report", str(path)), "unknown model file type")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_report_keras_files(tmp_path, suffix):
    from handbuilt import TOWER_MACS, keras_tower_net

    path = tmp_path / f"tower{suffix}"
    keras_tower_net().save(path)
    doc = json.loads(run_cli("report", str(path), "--json").stdout)
    assert doc["seed"]["macs"] == sum(TOWER_MACS.values())
    assert doc["framework"] == "keras"


def test_report_pt2_file(tmp_path):
    import torch

    from handbuilt import TOWER_MACS, TOWER_TRAINABLE, H, W, torch_tower_net

    path = tmp_path / "tower.pt2"
    torch.export.save(torch.export.export(torch_tower_net().eval(), (torch.zeros(1, 3, H, W),)), path)
    doc = json.loads(run_cli("report", str(path), "--json").stdout)
    assert doc["seed"]["macs"] == sum(TOWER_MACS.values())
    assert doc["seed"]["params"] == sum(TOWER_TRAINABLE.values())
