"""What the parsing child reports for failures that are not the file's fault: a graph-building
bug is called a bug (with the op it met), anything else unexpected is an unreadable file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from morphscope.importers import isolation
from morphscope.importers.limits import Limits

SCRATCH_ENV = ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def _in_process(monkeypatch, tmp_path):
    """Run the child's code in pytest's own process: no resource limits, and the temp folder
    and environment it sets (for a forked child, its own) restored after the test."""
    import tempfile

    monkeypatch.setattr(isolation, "_set_limits", lambda limits: None)
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    for key in SCRATCH_ENV:
        monkeypatch.setenv(key, str(tmp_path))


def _outcome(monkeypatch, tmp_path, error):
    def task(path, name, limits, out, full):
        raise error

    _in_process(monkeypatch, tmp_path)
    monkeypatch.setitem(isolation.TASKS, "model", task)
    request = {"out": str(tmp_path), "name": "net.pt2", "limits": Limits().to_dict(),
               "task": "model", "path": str(tmp_path / "net.pt2"), "full": False, "what": ".pt2 file"}
    code = isolation._child(request)
    return code, json.loads((tmp_path / "result.json").read_text())


def test_a_graph_building_bug_is_reported_as_a_bug_naming_the_op(monkeypatch, tmp_path):
    err = IndexError("tuple index out of range")
    err.add_note("MorphScope bug: building 'net.pt2' failed at unbind_1 (aten.unbind, module 'head')")
    code, outcome = _outcome(monkeypatch, tmp_path, err)
    assert code == isolation._EXIT_ERROR
    assert outcome["message"] == ("net.pt2: MorphScope bug: building 'net.pt2' failed at unbind_1 "
                                  "(aten.unbind, module 'head') (IndexError: tuple index out of "
                                  "range); please report it")


@pytest.mark.parametrize("error", [KeyError("graph_module"), ValueError("bad\nmultiline")])
def test_other_unexpected_errors_are_an_unreadable_file_in_one_line(monkeypatch, tmp_path, error):
    code, outcome = _outcome(monkeypatch, tmp_path, error)
    assert code == isolation._EXIT_ERROR
    assert outcome["message"].startswith("net.pt2: not a readable .pt2 file (")
    assert "\n" not in outcome["message"]


def test_every_temporary_file_of_a_parse_goes_inside_its_request_folder(monkeypatch, tmp_path):
    import os
    import tempfile

    seen = {}

    def task(path, name, limits, out, full):
        seen["mkstemp"] = tempfile.mkstemp()[1]  # what Keras and the frameworks call
        seen.update({key: os.environ[key] for key in SCRATCH_ENV})

    _in_process(monkeypatch, tmp_path)
    monkeypatch.setitem(isolation.TASKS, "model", task)
    request = {"out": str(tmp_path / "request"), "name": "net.keras", "limits": Limits().to_dict(),
               "task": "model", "path": str(tmp_path / "net.keras"), "full": False, "what": "model file"}
    (tmp_path / "request").mkdir()
    assert isolation._child(request) == isolation._EXIT_OK
    scratch = tmp_path / "request" / "tmp"  # removed with the request folder on every outcome
    assert Path(seen["mkstemp"]).parent == scratch
    assert seen == {"mkstemp": seen["mkstemp"], "TMPDIR": str(scratch),
                    "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"), "TRITON_CACHE_DIR": str(scratch / "triton")}


def test_a_file_over_the_written_size_limit_is_one_line(monkeypatch, tmp_path):
    import errno

    code, outcome = _outcome(monkeypatch, tmp_path, OSError(errno.EFBIG, "File too large"))
    assert code == isolation._EXIT_ERROR
    assert outcome["message"] == "net.pt2: unpacks a file larger than 4 GB; limit 4 GB"
