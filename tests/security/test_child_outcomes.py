"""What the parsing child reports for failures that are not the file's fault: a graph-building
bug is called a bug (with the op it met), anything else unexpected is an unreadable file."""

from __future__ import annotations

import json

import pytest

from morphscope.importers import isolation
from morphscope.importers.limits import Limits


def _outcome(monkeypatch, tmp_path, error):
    def task(path, name, limits, out, full):
        raise error

    monkeypatch.setattr(isolation, "_set_limits", lambda limits: None)  # never limit pytest itself
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
