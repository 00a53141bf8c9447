"""The same own network saved as `.pt2`: the CLI and the app rewrite the archive into the
morphed program without running anything from it; `torch.export.load` runs the result."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from morphscope.cli.main import main
from handbuilt import TouchOnUnpickle
from own_models import DEAD, trained_own_net
from pathlib import Path

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The trained net as seed.pt2 and its state_dict as gammas.pt, with the input batch."""
    net, _, x = trained_own_net()
    folder = tmp_path_factory.mktemp("own_pt2")
    torch.export.save(torch.export.export(net, (x[:1],)), folder / "seed.pt2")
    torch.save(net.state_dict(), folder / "gammas.pt")
    with torch.no_grad():
        expected = net(x[:1]).numpy()
    return folder, x[:1], expected


def _export(folder: Path, *extra: str, model: str = "seed.pt2") -> dict:
    code = main(["export", str(folder / model), "--checkpoint", str(folder / "gammas.pt"), "--out",
                 str(folder / "widths.json"), "--model-out", str(folder / "small.pt2"), "--json", *extra])
    assert code == 0
    return json.loads((folder / "widths.json").read_text())


def _run(path_or_bytes, x) -> tuple[np.ndarray, int]:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    program = torch.export.load(source)
    module = program.module()
    with torch.no_grad():
        return module(x).numpy(), sum(p.numel() for p in module.parameters())


def test_cli_rewrites_a_pt2_into_the_morphed_program(saved, capsys):
    folder, x, expected = saved
    widths = _export(folder, "--copy-weights")
    summary = json.loads(capsys.readouterr().out)
    out, params = _run(folder / "small.pt2", x)
    assert params == summary["model_params"] == summary["predicted_params"]
    # The learned widths (tests/own_models.py DEAD), in the rewritten program's weights:
    assert widths["stem.0"] == 24 - len(DEAD["stem.1"]) and widths["grouped.0"] == 36 - 4
    state = torch.export.load(folder / "small.pt2").state_dict
    assert tuple(state["stem.0.weight"].shape) == (19, 3, 3, 3)
    assert tuple(state["dw.0.weight"].shape) == (28 - 4, 1, 3, 3)  # still depthwise: groups 24
    assert tuple(state["grouped.0.weight"].shape) == (32, 28 // 4, 3, 3)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_cli_pt2_round_to_and_fresh_weights(saved, capsys):
    folder, x, _ = saved
    _export(folder, "--round-to", "8")
    summary = json.loads(capsys.readouterr().out)
    out, params = _run(folder / "small.pt2", x)
    assert params == summary["predicted_params"] and out.shape == (1, 10)
    assert summary["rounding_added"]["params"] > 0
    state = torch.export.load(folder / "small.pt2").state_dict
    assert state["stem.0.weight"].shape[0] == 24  # 19 rounded up to 24, the seed's: kept as it was
    assert torch.equal(state["res_a.1.weight"], torch.ones(16))  # 20 -> 16, initialized anew: scale 1
    assert torch.equal(state["res_a.1.running_var"], torch.ones(16))


def test_no_pickle_or_code_from_the_file_runs_while_rewriting(saved, capsys):
    folder, x, expected = saved
    marker = folder / "marker"
    with zipfile.ZipFile(folder / "seed.pt2") as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    sample = next(m for m in members if m.endswith("data/sample_inputs/model.pt"))
    members[sample] = pickle.dumps(TouchOnUnpickle(str(marker)))
    with zipfile.ZipFile(folder / "hostile.pt2", "w", zipfile.ZIP_STORED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    _export(folder, "--copy-weights", model="hostile.pt2")
    capsys.readouterr()
    assert not marker.exists()
    out, _ = _run(folder / "small.pt2", x)  # the rewritten file carries our own example inputs
    assert not marker.exists()
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_the_app_builds_a_pt2_download_from_an_uploaded_pt2(saved):
    folder, x, expected = saved
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.sidebar.radio(key="model_source").set_value("Upload a file").run()
    at.sidebar.file_uploader(key="model_upload").upload("seed.pt2", (folder / "seed.pt2").read_bytes()).run()
    at.sidebar.file_uploader(key="checkpoint_uploads").upload("gammas.pt", (folder / "gammas.pt").read_bytes()).run()
    assert not at.exception and not at.error
    at.button(key="build_model").click().run()
    assert not at.exception and not at.error
    _, name, data, note = at.session_state["model_file"]  # what the download button serves
    assert name.endswith(".pt2")
    out, params = _run(data, x)
    assert note == f"{params:,} parameters (predicted {params:,})"
    # the app's default threshold (0.01) and factor (1.0): the alive widths, weights fresh
    assert tuple(torch.export.load(io.BytesIO(data)).state_dict["stem.0.weight"].shape) == (19, 3, 3, 3)
    assert out.shape == expected.shape


def test_rebuild_of_a_pt2_path_returns_the_rewritten_program(saved):
    import morphscope

    folder, x, expected = saved
    program = morphscope.rebuild(folder / "seed.pt2", folder / "gammas.pt", copy_weights=True)
    assert isinstance(program, torch.export.ExportedProgram)
    with torch.no_grad():
        np.testing.assert_allclose(program.module()(x).numpy(), expected, atol=1e-5, rtol=0)
