"""Latency profiles: the file round-trips and is validated; latency on a profile is the fitted
times summed per op; the latency regularizer's coefficients on a profile are the analyzer's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from morphscope.analyzers.hardware import (HARDWARE, ClassTimes, get_hardware, load_profile, profile_doc,
                                           profile_from_doc)
from morphscope.analyzers.synthetic import conv_stack
from morphscope.analyzers.widths import compile_width_model
from morphscope.errors import MorphScopeError

CLASSES = {"default": ClassTimes(2e-3, 5e-3, 7e-6), "conv": ClassTimes(1.5e-3, 0.0, 11e-6),
           "bn": ClassTimes(0.0, 3e-3, 2e-6)}


def _write(tmp_path, doc, name="cpu.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_profile_round_trips_through_its_file(tmp_path):
    doc = profile_doc("my-cpu", CLASSES, 4, device="Some CPU", threads=2, mape=0.05)
    hw = get_hardware(str(_write(tmp_path, doc)))  # a .json name is a profile wherever a name is
    assert hw.name == "my-cpu" and hw.batch == 4 and dict(hw.classes) == CLASSES
    assert hw.is_profile and "Some CPU" in hw.prediction and "batch 4" in hw.prediction
    assert profile_doc(hw.name, hw.classes, hw.batch, **hw.measured) == doc


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other/1"), "not a latency profile"),
    (lambda d: d["classes"].pop("default"), "'default' among them"),
    (lambda d: d["classes"]["conv"].update(s_per_gflop=-1.0), r"classes.conv.s_per_gflop must be a finite"),
    (lambda d: d["classes"]["conv"].update(overhead_s=float("nan")), "overhead_s must be a finite"),
    (lambda d: d["classes"]["bn"].update(s_per_gb=1e300), "s_per_gb must be a finite"),
    (lambda d: d["classes"]["bn"].update(s_per_gb=True), "s_per_gb must be a finite"),
    (lambda d: d["classes"].update({"a b": {}}), "is not a name with fitted times"),
    (lambda d: d["classes"].update({f"c{i}": d["classes"]["bn"] for i in range(70)}), "at most 64"),
    (lambda d: d.update(batch=0), "'batch' must be a whole number"),
    (lambda d: d.update(name=""), "'name' must be a text"),
    (lambda d: d.update(name="[x](http://127.0.0.1/x)"), "'name' must be a text"),
])
def test_malformed_profiles_get_one_line_naming_the_file(tmp_path, edit, message):
    doc = json.loads(json.dumps(profile_doc("my-cpu", CLASSES, 1)))
    edit(doc)
    with pytest.raises(MorphScopeError, match=f"^cpu.json: .*{message}") as err:
        load_profile(_write(tmp_path, doc), "cpu.json")
    assert "\n" not in str(err.value)


def test_unreadable_profiles_get_one_line(tmp_path):
    (tmp_path / "noise.json").write_bytes(b"\x00\xff not json")
    with pytest.raises(MorphScopeError, match="^noise.json: not a latency profile \\(not JSON\\)$"):
        load_profile(tmp_path / "noise.json", "noise.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(MorphScopeError, match="not a latency profile"):
        load_profile(tmp_path / "deep.json", "deep.json")
    (tmp_path / "big.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(MorphScopeError, match="over 1,048,576 bytes"):
        load_profile(tmp_path / "big.json", "big.json")
    with pytest.raises(MorphScopeError, match="cannot read the profile"):
        load_profile(tmp_path / "missing.json", "missing.json")
    with pytest.raises(MorphScopeError, match="unknown hardware 'B200'"):
        get_hardware("B200")


def test_every_named_device_states_its_dtype_and_source():
    assert {"A100", "H100", "L4", "Xeon-8380", "V100"} <= set(HARDWARE)
    for hw in HARDWARE.values():
        assert hw.dtype and hw.source and not hw.is_profile
    assert "tensor cores" in HARDWARE["V100"].dtype  # its 125,000 GFLOP/s is the fp16 tensor-core peak


def test_latency_on_a_profile_is_the_fitted_times_summed_per_op():
    # a chain of conv -> bn -> relu units: every op against the formula, op by op
    graph = conv_stack("chain", 12)
    model = compile_width_model(graph)
    hw = profile_from_doc(profile_doc("p", CLASSES, 2), "p")
    per_op = model.per_op(model.seed_widths)
    expected = 0.0
    for i, cls in enumerate(model.costs.classes):
        t = CLASSES.get(cls, CLASSES["default"])
        flops, moved = 2 * per_op["macs"][i], per_op["bytes_moved"][i]
        if flops + moved > 0:  # an op that does work: its overhead, then batch x (compute + memory)
            expected += t.overhead_s + 2 * (flops * t.s_per_gflop + moved * t.s_per_gb) / 1e9
    assert model.target_cost(model.seed_widths, "latency", hw) == pytest.approx(expected, rel=1e-12)


def test_regularizer_coefficients_on_a_profile_are_the_analyzers():
    from morphscope.analyzers.cost import bilinear
    from morphscope.regularizers.core import regularizer_plan

    graph = conv_stack("residual", 15)
    model = compile_width_model(graph)
    hw = profile_from_doc(profile_doc("p", CLASSES, 3), "p")
    plan = regularizer_plan(graph, model, "latency", hw)
    assert plan.n_branches == 1  # compute and memory times add on a profile: one bilinear form
    widths = np.maximum(1, model.seed_widths - 3)
    a_in, a_out = model.m_in @ widths, model.m_out @ widths
    bilinear_s = bilinear(plan.arrays["branch0_cost"], a_in, a_out)
    per_op = model.per_op(widths)
    work = 2 * per_op["macs"] + per_op["bytes_moved"] > 0
    overhead = sum(CLASSES.get(c, CLASSES["default"]).overhead_s for c, w in zip(model.costs.classes, work) if w)
    # the analyzer's total = the regularizer's bilinear cost + the per-call overheads (constant)
    assert model.target_cost(widths, "latency", hw) == pytest.approx(float(np.sum(bilinear_s)) + overhead, rel=1e-12)


def test_the_cli_takes_a_profile_wherever_it_takes_a_hardware_name(tmp_path, capsys):
    from morphscope.cli.main import main

    path = _write(tmp_path, profile_doc("my-cpu", CLASSES, 1, device="Some CPU", threads=2))
    assert main(["report", "example:digits", "--hardware", str(path)]) == 0
    out = capsys.readouterr().out
    assert "prediction of the profile my-cpu, measured: Some CPU, torch, 2 threads, batch 1" in out
    assert main(["expand", "example:digits", "--checkpoint", "examples/digits/flops_gammas.pt",
                 "--resource", "latency", "--hardware", str(path), "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["expanded"]
    assert entry["cost"] <= entry["budget"]  # solved on the profile's latency
    bad = _write(tmp_path, {"format": "x"}, "bad.json")
    with pytest.raises(SystemExit):
        main(["report", "example:digits", "--hardware", str(bad)])
    assert "bad.json: not a latency profile" in capsys.readouterr().err


def test_text_from_a_profile_is_shown_as_plain_characters(tmp_path):
    doc = profile_doc("my-cpu", CLASSES, 1, device="![p](http://127.0.0.1/img.png) <img src=x>", threads=2)
    hw = load_profile(_write(tmp_path, doc), "cpu.json")
    assert hw.measured["device"] == "p(http://127.0.0.1/img.png) img srcx"  # no [ ] ! < > = left
    assert not set("[]!<>=*`") & set(hw.prediction)
