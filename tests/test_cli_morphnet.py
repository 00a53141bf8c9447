"""report / expand / export on zoo models with trained-looking checkpoints, run as a user would."""

import json
import pickle
import re

import numpy as np
import pytest

from test_cli import _Payload, expect_one_line_error, run_cli


def trained_looking(size, rng):
    """|N(0, 0.5)| scales with about a third of the channels driven to (near) zero."""
    gamma = np.abs(rng.normal(0, 0.5, size)).astype(np.float32)
    gamma[rng.random(size) < 0.35] = rng.uniform(0, 1e-3)
    return gamma


@pytest.fixture(scope="module")
def torch_checkpoints(tmp_path_factory):
    import torch
    import torchvision

    rng = np.random.default_rng(7)
    paths = {}
    for name in ("resnet18", "mobilenet_v2"):
        state = torchvision.models.get_model(name).state_dict()
        for key, value in state.items():
            if key.endswith(".weight") and value.dim() == 1:  # every bn scale
                state[key] = torch.as_tensor(trained_looking(value.numel(), rng))
        path = tmp_path_factory.mktemp(name) / f"{name}_gammas.pth"
        torch.save(state, path)
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def keras_checkpoint(tmp_path_factory):
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    rng = np.random.default_rng(11)
    model = keras.applications.ResNet50(weights=None)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(trained_looking(layer.gamma.shape[0], rng))
    path = tmp_path_factory.mktemp("keras") / "resnet50.weights.h5"
    model.save_weights(path)
    return path


def run_json(*args):
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def check_report_expand_export(spec, checkpoint, tmp_path, model_suffix):
    report = run_json("report", spec, "--checkpoint", str(checkpoint))
    [morphed] = report["morphed"]
    seed = report["seed"]
    assert morphed["flops"] < seed["flops"] and morphed["params"] < seed["params"]
    assert set(morphed) >= {"macs", "flops", "params", "size", "widths"}

    expanded = run_json("expand", spec, "--checkpoint", str(checkpoint))["expanded"][0]
    assert expanded["factor"] > 1
    assert expanded["budget"] == seed["flops"]
    # Within 1% under the seed's FLOPs.
    assert 0.99 * seed["flops"] <= expanded["cost"] <= seed["flops"]

    widths_file, model_file = tmp_path / "widths.json", tmp_path / f"morphed{model_suffix}"
    result = run_cli("export", spec, "--checkpoint", str(checkpoint), "--out", str(widths_file),
                     "--multiplier", str(expanded["factor"]), "--model-out", str(model_file))
    assert result.returncode == 0, result.stderr
    assert json.loads(widths_file.read_text()) == expanded["widths"]
    actual, predicted = re.search(r"([\d,]+) parameters \(predicted ([\d,]+)\)", result.stdout).groups()
    assert actual == predicted
    # The rebuilt model re-imports with the expanded FLOPs (removed blocks cost nothing).
    rebuilt = run_json("report", str(model_file))
    assert rebuilt["seed"]["flops"] <= expanded["cost"]
    assert rebuilt["seed"]["params"] == int(actual.replace(",", ""))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_checkpoint_through_report_expand_export(name, torch_checkpoints, tmp_path):
    check_report_expand_export(f"torchvision:{name}", torch_checkpoints[name], tmp_path, ".pt2")


def test_keras_resnet50_checkpoint_through_report_expand_export(keras_checkpoint, tmp_path):
    check_report_expand_export("keras:ResNet50", keras_checkpoint, tmp_path, ".keras")


def test_checkpoint_for_the_wrong_model(torch_checkpoints):
    result = run_cli("report", "torchvision:resnet34", "--checkpoint",
                     str(torch_checkpoints["resnet18"]))
    line = expect_one_line_error(result, "does not fit torchvision:resnet34")
    assert "missing" in line and "resnet18_gammas.pth" in line


def test_checkpoint_with_wrong_shapes(torch_checkpoints):
    result = run_cli("report", "torchvision:resnet18", "--checkpoint",
                     str(torch_checkpoints["mobilenet_v2"]))
    expect_one_line_error(result, "does not fit torchvision:resnet18")


def test_corrupt_checkpoint(torch_checkpoints, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    data = torch_checkpoints["resnet18"].read_bytes()
    corrupt.write_bytes(data[: len(data) // 3])
    line = expect_one_line_error(run_cli("report", "torchvision:resnet18", "--checkpoint",
                                         str(corrupt)), "not a readable PyTorch file")
    assert "corrupt.pth" in line


def test_checkpoint_pickle_with_payload_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "gammas.pt"
    path.write_bytes(pickle.dumps({"bn1.weight": _Payload(marker)}))
    line = expect_one_line_error(run_cli("report", "torchvision:resnet18", "--checkpoint",
                                         str(path)), "refused")
    assert "system" in line
    assert not marker.exists()


def test_morphnet_alive_file_is_a_learned_structure(tmp_path):
    # morph-net's StructureExporter writes TF op names; the suffix is stripped to match layers.
    alive = tmp_path / "alive_12000"
    alive.write_text(json.dumps({"conv1_conv/Conv2D": 40, "conv2_block1_1_conv/Conv2D": 20,
                                 "not_a_layer/Conv2D": 3}, indent=2, sort_keys=True))
    doc = run_json("report", "keras:ResNet50", "--checkpoint", str(alive))
    [morphed] = doc["morphed"]
    assert morphed["widths"]["conv2_block1_1_conv"] == 20
    # conv1_conv's output is tied to no residual add: its 40 stand; the block's 1x1 reads 40.
    assert morphed["widths"]["conv1_conv"] == 40
    assert any("not_a_layer" in note for note in morphed["notes"])


def test_export_csv_table_for_the_bundled_example(tmp_path):
    import csv
    import math

    from morphscope.exporters.writers import TABLE_COLUMNS

    report = run_json("report", "example:digits", "--checkpoint", "examples/digits/flops_gammas.pt")
    alive = report["morphed"][0]["widths"]
    out, table = tmp_path / "layers.csv", tmp_path / "layers.json"
    result = run_cli("export", "example:digits", "--checkpoint", "examples/digits/flops_gammas.pt",
                     "--out", str(out), "--multiplier", "1.5", "--table", str(table))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    as_json = json.loads(table.read_text())
    assert [{k: str(v) for k, v in row.items()} for row in as_json] == rows  # same table twice
    assert tuple(rows[0]) == TABLE_COLUMNS
    stem = next(r for r in rows if r["layer"] == "stem.0")
    # stem: 3x3 conv, 1 input channel (the image), 16x16 output.
    assert int(stem["seed_width"]) == 28
    assert int(stem["seed_macs"]) == 3 * 3 * 16 * 16 * 1 * 28
    assert int(stem["alive_width"]) == alive["stem.0"]
    assert int(stem["alive_macs"]) == 3 * 3 * 16 * 16 * 1 * alive["stem.0"]
    assert int(stem["expanded_width"]) == math.floor(1.5 * alive["stem.0"])
    fc = next(r for r in rows if r["layer"] == "fc")
    assert int(fc["expanded_width"]) == 10  # logits are pinned
