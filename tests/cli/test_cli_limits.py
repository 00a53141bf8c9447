"""The CLI's parse-limit options reach the isolated worker, and bad values are refused."""

from __future__ import annotations

import json

import pytest

from morphscope.cli.main import main
from morphscope.graph import ChannelGraph, Kind


def _graph_json(path, note_bytes: int):
    # x -> conv (3 -> 5) -> out, with a note of note_bytes characters: parsing it needs at
    # least that much memory.
    g = ChannelGraph("tiny", "torch", (3, 8, 8))
    g.add_op("x", Kind.INPUT, out_channels=3)
    g.add_op("conv", Kind.CONV, in_channels=3, out_channels=5, groups=1, kernel=(3, 3),
             stride=(1, 1), in_spatial=(8, 8), out_spatial=(8, 8), bias=False, params=135,
             trainable_params=135)
    g.add_op("out", Kind.OUTPUT)
    g.connect("x", "conv")
    g.connect("conv", "out")
    doc = json.loads(g.to_json())
    doc["notes"] = ["x" * note_bytes]
    path.write_text(json.dumps(doc))
    return path


def test_a_file_over_the_memory_limit_gets_one_line_naming_the_limit(tmp_path, capsys):
    path = _graph_json(tmp_path / "big.json", 60 * 2**20)
    assert main(["report", str(path), "--max-memory-gb", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    # 0.01 GB = 10,737,418 bytes, shown as 10.2 MB (MiB-based, as the limits help prints it).
    assert err == f"morphscope: error: {path}: needs more than 10.2 MB to parse; limit 10.2 MB"


def test_the_same_file_parses_within_a_larger_limit(tmp_path, capsys):
    path = _graph_json(tmp_path / "big.json", 60 * 2**20)
    assert main(["report", str(path), "--max-memory-gb", "1", "--json"]) == 0
    # 3*3 * 8*8 * 3*5 MACs: kh*kw*H*W*in*out
    assert json.loads(capsys.readouterr().out)["seed"]["macs"] == 3 * 3 * 8 * 8 * 3 * 5


@pytest.mark.parametrize("option, value", [("--max-memory-gb", "0"), ("--max-cpu-seconds", "-1"),
                                           ("--max-wall-seconds", "nan")])
def test_limits_must_be_finite_and_positive(option, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["report", "torchvision:resnet18", f"{option}={value}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "a parse limit must be finite and > 0" in err and "\n" not in err
