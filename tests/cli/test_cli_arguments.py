"""Command-line values refused with one line and exit status 2 (issue 13): thresholds,
multipliers, budgets, input shapes, hardware names."""

import json

import pytest

from morphscope.cli.arguments import MAX_MULTIPLIER, attach_signed_values
from morphscope.cli.main import build_parser, main
from morphscope.importers.limits import DEFAULT_LIMITS
from morphscope.units import human_bytes
from test_cli_outputs import DIGITS_GAMMAS, DIGITS_MODEL, cli_error

R18 = "torchvision:resnet18"


@pytest.mark.parametrize("value, fragment", [
    ("nan", "nan: a threshold on |gamma| must be finite and >= 0"),
    ("inf", "inf: a threshold on |gamma| must be finite and >= 0"),
    ("-inf", "-inf: a threshold on |gamma| must be finite and >= 0"),
    ("-0.5", "-0.5: a threshold on |gamma| must be finite and >= 0"),
    ("abc", "'abc' is not a number"),
])
def test_bad_threshold(capsys, value, fragment):
    line = cli_error(capsys, "report", R18, "--threshold", value)
    assert line.startswith("morphscope report: error: argument --threshold: ")
    assert fragment in line


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300", "0", "-1", "1e9", "100.5"])
def test_bad_multiplier(capsys, tmp_path, value):
    line = cli_error(capsys, "export", R18, "--checkpoint", "g.pth", "--out", tmp_path / "w.json",
                     "--multiplier", value)
    assert f"argument --multiplier: {value}: a width multiplier must be finite and > 0 and <= 100" in line


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-5"])
def test_bad_budget(capsys, value):
    line = cli_error(capsys, "expand", R18, "--checkpoint", "g.pth", "--budget", value)
    assert f"argument --budget: {value}: a budget must be finite and > 0" in line


def test_boundary_values_are_accepted():
    parser = build_parser()
    args = parser.parse_args(attach_signed_values(
        ["export", R18, "--checkpoint", "g", "--out", "w", "--threshold", "0",
         "--multiplier", str(MAX_MULTIPLIER)]))
    assert (args.threshold, args.multiplier) == (0.0, 100.0)
    args = parser.parse_args(["expand", R18, "--checkpoint", "g", "--budget", "1e-9",
                              "--input-shape", "3,17,19"])
    assert (args.budget, args.input_shape) == (1e-9, (3, 17, 19))


@pytest.mark.parametrize("value, fragment", [
    ("3", "'3' has 1 value(s); zoo models take 2-D images: expected positive integers C,H,W"),
    ("3,224", "'3,224' has 2 value(s)"),
    ("3,224,224,1", "'3,224,224,1' has 4 value(s)"),
    ("-3,224,224", "'-3,224,224': expected positive integers C,H,W such as 3,224,224"),
    ("3,0,224", "'3,0,224': expected positive integers"),
    ("3,x,224", "'3,x,224': expected positive integers"),
])
def test_input_shape_refused_before_the_model_is_built(capsys, value, fragment):
    line = cli_error(capsys, "report", R18, "--input-shape", value)
    assert "argument --input-shape: " + fragment in line


def test_input_shape_for_a_model_file_is_refused(capsys):
    line = cli_error(capsys, "report", DIGITS_MODEL, "--input-shape", "3,32,32")
    assert f"{DIGITS_MODEL} carries its own input shape" in line


@pytest.mark.parametrize("shape, fragment", [
    # resnet18 strides: conv1 /2, maxpool /2, layer2..4 first blocks /2 each.
    # 1x1 input: conv1 (stride 2) gets 1 pixel.
    ("3,1,1", "conv1 (stride 2x2) gets a 1x1 map"),
    # 16 -> conv1 8 -> maxpool 4 -> layer2 2 -> layer3 1: layer4's stride-2 conv gets 1x1.
    ("3,16,16", "layer4.0.conv1 (stride 2x2) gets a 1x1 map"),
])
def test_input_shape_too_small_for_the_strides(capsys, shape, fragment):
    line = cli_error(capsys, "report", R18, "--input-shape", shape)
    assert f"--input-shape {shape} is too small for {R18}: {fragment}" in line


def test_input_shape_the_model_cannot_take(capsys):
    # torchvision's resnet18 reads 3 channels; the zoo captures square images.
    line = cli_error(capsys, "report", R18, "--input-shape", "1,64,48")
    assert f"--input-shape 1,64,48: {R18} was captured at 3,48,48 instead" in line


def test_smallest_input_shape_for_the_strides_is_accepted(capsys):
    # 32 -> 16 -> 8 -> 4 -> 2: layer4's stride-2 conv gets 2x2, one pixel per stride.
    assert main(["report", R18, "--input-shape", "3,32,32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [3, 32, 32]


def test_unknown_hardware_lists_the_choices(capsys):
    line = cli_error(capsys, "report", R18, "--hardware", "B200")
    assert "argument --hardware: unknown hardware 'B200'" in line
    assert "'K80', 'L4', 'P100', 'P4', 'T4', 'TPUv2', 'V100'" in line  # morph-net's table among them
    assert "or a profile .json written by morphscope profile" in line


def test_help_shows_the_parse_limits(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"limited to {human_bytes(DEFAULT_LIMITS.max_memory_bytes)} of memory" in text
    assert f"{DEFAULT_LIMITS.max_json_depth} levels deep" in text


def test_export_help_states_the_replacement_rule(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "An existing file is replaced" in text and "is refused before anything runs" in text


def test_hardware_sets_every_checkpoints_latency(capsys, tmp_path):
    # Every gamma set to 1 keeps every channel alive: the checkpoint's latency on each hardware
    # must be the seed's own latency there (seed_report computes it for every device).
    import torch

    gammas = torch.load(DIGITS_GAMMAS, weights_only=True)
    all_alive = tmp_path / "all_alive.pt"
    torch.save({key: torch.ones_like(value) for key, value in gammas.items()}, all_alive)
    seen = {}
    for hardware in ("K80", "TPUv2"):
        assert main(["report", "example:digits", "--checkpoint", str(all_alive), "--hardware",
                     hardware, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        [entry] = doc["morphed"]
        assert entry["hardware"] == hardware and entry["flops"] == doc["seed"]["flops"]
        assert entry["latency_s"] == pytest.approx(doc["seed"]["latency_s"][hardware])
        seen[hardware] = entry["latency_s"]
    assert seen["K80"] != pytest.approx(seen["TPUv2"])
    assert main(["report", "example:digits", "--checkpoint", str(all_alive), "--hardware", "TPUv2"]) == 0
    assert "(+0.0% vs seed" in capsys.readouterr().out.split("  latency")[-1]


@pytest.mark.parametrize("argv, fragment", [
    # 3 * 4294967296**2 * 4 bytes = 2.2e20 bytes: torch's storage size overflowed before.
    (["report", R18, "--input-shape", "3,4294967296,4294967296"],
     "--input-shape 3,4294967296,4294967296: one float32 image is 2.01e+08 TB, over the 2 GB memory limit"),
    # 3 * 100000 * 100000 * 4 = 1.2e11 bytes = 111.8 GiB, against the 2 GiB default.
    (["export", R18, "--checkpoint", "g.pth", "--out", "w.json", "--model-out", "x.pt2",
      "--input-shape", "3,100000,100000"],
     "--input-shape 3,100000,100000: one float32 image is 112 GB, over the 2 GB memory limit"),
    # 3 * 1000 * 1000 * 4 = 12e6 bytes = 11.4 MiB, against 0.01 GiB = 10.2 MiB.
    (["report", R18, "--input-shape", "3,1000,1000", "--max-memory-gb", "0.01"],
     "--input-shape 3,1000,1000: one float32 image is 11.4 MB, over the 10.2 MB memory limit"),
])
def test_input_shape_over_the_memory_limit_is_refused_before_the_model_is_built(capsys, monkeypatch,
                                                                                argv, fragment):
    import morphscope.importers.load as load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model was built"))
    line = cli_error(capsys, *argv)
    assert line == f"morphscope: error: {fragment} (--max-memory-gb); use a smaller H,W"


def test_input_shape_whose_activations_exceed_the_memory_limit_is_refused(capsys):
    # 3,224,224 is 3*224*224*4 = 602,112 bytes, under 0.002 GiB = 2,147,483 bytes; resnet18's
    # conv1 (stride 2, 64 channels) outputs 64*112*112*4 = 3,211,264 bytes (3.06 MiB), over it.
    line = cli_error(capsys, "report", R18, "--input-shape", "3,224,224", "--max-memory-gb", "0.002")
    assert line == (f"morphscope: error: --input-shape 3,224,224 is too large for {R18}: conv1 outputs "
                    "64x112x112 (3.06 MB in float32), over the 2.05 MB memory limit (--max-memory-gb); "
                    "use a smaller H,W")


@pytest.mark.parametrize("option, value, ceiling", [
    ("--max-memory-gb", "1e300", "1024"),  # setrlimit overflowed
    ("--max-memory-gb", "1025", "1024"),
    ("--max-cpu-seconds", "1e300", "86400"),
    ("--max-wall-seconds", "1e300", "86400"),  # select() overflowed in the parser server
    ("--max-wall-seconds", "86401", "86400"),
])
def test_limits_above_their_ceiling_are_refused(capsys, option, value, ceiling):
    line = cli_error(capsys, "report", R18, option, value)
    assert line == (f"morphscope report: error: argument {option}: {value}: a parse limit must be "
                    f"finite and > 0 and <= {ceiling} (see morphscope report --help)")


def test_limits_at_their_ceiling_are_accepted():
    args = build_parser().parse_args(["report", R18, "--max-memory-gb", "1024", "--max-cpu-seconds",
                                      "86400", "--max-wall-seconds", "86400"])
    assert (args.max_memory_gb, args.max_cpu_seconds, args.max_wall_seconds) == (1024, 86400, 86400)
