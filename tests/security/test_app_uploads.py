"""The explorer under bad uploads (issues 13, 14): each gets one line next to its uploader, the
model and checkpoints the user had stay, a bad file that stays listed is parsed once, and no
temporary folder is left behind."""

import io
import tempfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from morphscope.explorer.views.common import plain
from morphscope.importers import isolation

APP = str(Path(__file__).resolve().parents[2] / "app.py")
DEEP = b"[" * 100_000 + b"]" * 100_000


def metrics_rows(at):
    return list(at.dataframe[0].value["structure"])


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """Every temporary folder this process (the app under AppTest) makes goes here."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture()
def parses(monkeypatch):
    """Counts the files sent to the isolated worker."""
    calls = []
    run = isolation._run_isolated

    def counting(task, kind, path, name, *args, **kwargs):
        calls.append(name)
        return run(task, kind, path, name, *args, **kwargs)

    monkeypatch.setattr(isolation, "_run_isolated", counting)
    return calls


def good_checkpoint():
    """The bundled example's own FLOP checkpoint, uploaded under another name."""
    from morphscope.importers.load import example_checkpoints

    return example_checkpoints("example:digits")["FLOPs-regularized"].read_bytes()


def bad_files(tmp_path):
    """name -> bytes of checkpoints that must each be refused with one line."""
    import h5py
    import numpy as np

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("layers/bn/vars/0", shape=(8,), dtype="f4", external=[(str(secret), 0, 32)])
    return {"alive_1": b'{"a": ' + DEEP + b"}",
            "noise.pt": bytes(range(256)) * 8,
            "outside.weights.h5": buffer.getvalue(),
            "empty.safetensors": b"\0" * 16}


def test_bad_checkpoints_keep_the_model_and_the_good_checkpoints(tmp_path, private_tmp):
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception
    mine = ("mine.pt", good_checkpoint(), "application/octet-stream")
    at.sidebar.file_uploader(key="checkpoint_uploads").set_value([mine]).run()
    before = metrics_rows(at)
    assert "mine.pt (alive)" in before
    for name, data in bad_files(tmp_path).items():  # listed beside the good one
        at.sidebar.file_uploader(key="checkpoint_uploads").set_value(
            [mine, (name, data, "application/octet-stream")]).run()
        assert not at.exception
        errors = [e.value for e in at.sidebar.error]
        assert any(e.startswith(plain(f"{name}:")) for e in errors), errors
        assert all("\n" not in e and str(private_tmp) not in e for e in errors)
        assert metrics_rows(at) == before  # model, bundled and uploaded checkpoints all still there
    assert list(private_tmp.iterdir()) == []


def test_a_bad_model_upload_keeps_the_model_the_user_had(tmp_path, private_tmp):
    at = AppTest.from_file(APP, default_timeout=300).run()
    before = metrics_rows(at)
    at.sidebar.radio(key="model_source").set_value("Upload a file").run()
    bomb = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("m/models/model.json", b" " * (64 * 2**20))
    for name, data in (("bomb.pt2", bomb.getvalue()), ("deep.keras", DEEP)):
        at.sidebar.file_uploader(key="model_upload").upload(name, data).run()
        assert not at.exception
        [error] = at.sidebar.error
        assert error.value.startswith(plain(f"{name}:")) and str(private_tmp) not in error.value
        assert metrics_rows(at) == before
    assert list(private_tmp.iterdir()) == []


def test_a_listed_bad_file_is_parsed_once_over_ten_reruns(tmp_path, private_tmp, parses):
    at = AppTest.from_file(APP, default_timeout=300).run()
    noise = bytes(range(255, -1, -1)) * 8  # content no other test uploads: not cached yet
    at.sidebar.file_uploader(key="checkpoint_uploads").upload("noise.pt", noise).run()
    assert [e.value for e in at.sidebar.error][0].startswith(plain("noise.pt: not a readable PyTorch file"))
    for step in range(10):  # slider moves rerun the script with the bad file still listed
        at.sidebar.slider(key="factor").set_value(1.0 + 0.01 * (step + 1)).run()
        assert not at.exception
    assert parses.count("noise.pt") == 1
    assert list(private_tmp.iterdir()) == []


def test_the_zoo_cache_never_opens_a_path(private_tmp):
    from morphscope.errors import UnsupportedFileError
    from morphscope.explorer import cache

    with pytest.raises(UnsupportedFileError, match="/etc/passwd: name a model as torchvision:NAME"):
        cache.model_from_spec("/etc/passwd")
    with pytest.raises(UnsupportedFileError, match="no longer in memory; upload it again"):
        cache.framework_model("upload:0123456789abcdef")


def test_uploads_over_the_size_limit_are_refused(monkeypatch):
    from morphscope.errors import UnsupportedFileError
    from morphscope.explorer import cache

    monkeypatch.setattr(cache, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(UnsupportedFileError, match="big.pt: 11 bytes, over the 10 bytes upload limit"):
        with cache.upload_file("big.pt", b"x" * 11):
            pass


def test_a_300_character_upload_name_never_reaches_a_server_path(private_tmp, monkeypatch):
    # Used to end in "OSError: File name too long": the upload's name was the temporary file's.
    paths = []
    run = isolation._run_isolated

    def recording(task, kind, path, name, *args, **kwargs):
        paths.append((Path(path).name, name))
        return run(task, kind, path, name, *args, **kwargs)

    monkeypatch.setattr(isolation, "_run_isolated", recording)
    long_name = "g" * 297 + ".pt"  # 300 characters; most filesystems allow 255
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.sidebar.file_uploader(key="checkpoint_uploads").upload(long_name, good_checkpoint()).run()
    assert not at.exception and not at.error
    assert f"{long_name} (alive)" in metrics_rows(at)  # the user's name, kept for the page
    assert paths == [("upload.pt", long_name)]
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("name, server_name", [
    ("g" * 297 + ".pt", "upload.pt"),
    ("../../etc/model.PT2", "upload.PT2"),
    ("C:\\Users\\me\\net.keras", "upload.keras"),
    ("gammas.weights.h5", "upload.h5"),  # the reader takes .weights.h5 from the user's name
    ("alive_12000", "alive_0"),  # morph-net alive files are known by their name alone
    ("notes." + "x" * 40, "upload"),  # a suffix this long picks no reader
    ("weights", "upload"),
])
def test_server_file_names_keep_only_the_suffix(name, server_name):
    from morphscope.explorer.cache import server_file_name

    assert server_file_name(name) == server_name


HOSTILE = "![p](http://127.0.0.1:9/p.png)[a](http://127.0.0.1:9/a) <b>b</b> $x$ :red[c]"
SHOWN_FIELDS = {"body", "label", "help", "placeholder", "caption"}  # proto fields Streamlit renders as markdown


def _texts_of(message):
    for field, value in message.ListFields():
        if isinstance(value, str) and field.name in SHOWN_FIELDS:
            yield value
        elif hasattr(value, "ListFields"):  # e.g. an expander's label sits in block.expandable
            yield from _texts_of(value)


def shown_texts(node):
    """Every markdown text of the page AppTest holds: bodies, captions, alerts, headers, widget
    labels and help, expander labels (never widget keys or values, which are not rendered)."""
    proto = getattr(node, "proto", None)
    texts = list(_texts_of(proto)) if proto is not None else []
    for child in getattr(node, "children", {}).values():
        texts += shown_texts(child)
    return texts


def test_hostile_upload_and_run_names_are_shown_as_literal_text(private_tmp):
    # Names that used to make every viewer's browser fetch an image from 127.0.0.1:9, show a
    # live link, bold text, LaTeX and red text (issue 26).
    import json
    import zipfile

    at = AppTest.from_file(APP, default_timeout=300).run()
    runs = io.BytesIO()
    with zipfile.ZipFile(runs, "w") as archive:
        archive.writestr(f"{HOSTILE}/alive_0", json.dumps({"res2.conv1.0": 40}))
        archive.writestr(f"{HOSTILE}/alive_10", json.dumps({"res2.conv1.0": 60}))
    at.sidebar.file_uploader(key="checkpoint_uploads").upload(f"{HOSTILE}.pt", good_checkpoint()).run()
    at.sidebar.file_uploader(key="run_uploads").upload(f"{HOSTILE}.zip", runs.getvalue()).run()
    assert not at.exception and not at.error
    assert f"{HOSTILE}.pt (alive)" in metrics_rows(at)  # the structure keeps the user's name
    texts = shown_texts(at._tree)
    for raw in ("](http", "<b>", "$x$", ":red["):
        assert [t for t in texts if raw in t] == []
    # Shown escaped: as its own label, in the run's step slider and its notes, in the reports.
    assert sum(plain(f"{HOSTILE}.pt") in t for t in texts) >= 2
    assert any(t.endswith(": step") and plain("[a](http:") in t for t in texts)
    at.sidebar.selectbox(key="expand_target").set_value(f"{HOSTILE}.pt").run()
    assert at.subheader[0].value == "Costs: " + plain(f"{HOSTILE}.pt")
    # Charts: plotly draws <b> and <a href> in names and hover text; they reach it as entities.
    specs = [json.dumps(json.loads(chart.proto.spec)) for chart in at.get("plotly_chart")]  # \u003c read as <
    assert not [s for s in specs if "<b>b</b>" in s] and any("&lt;b&gt;b&lt;/b&gt;" in s for s in specs)
