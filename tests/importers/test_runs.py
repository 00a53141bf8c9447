"""Training runs read from folders, loose files and zips; every bound checked before reading."""

import io
import json
import zipfile

import pytest

from morphscope.errors import UnsupportedFileError
from morphscope.importers import runs
from morphscope.importers.runs import (json_depth, run_from_dir, run_from_files, runs_from_uploads,
                                       runs_from_zip)


def alive(**counts):
    return json.dumps(counts).encode()


def zip_of(members, compression=zipfile.ZIP_DEFLATED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


LOG = b'{"step": 100, "target": "flops", "cost": 5.0, "loss": 1.0}\n{"step": 0, "cost": 9.0, "loss": NaN}\n'


def test_run_from_files_orders_steps_and_log_and_reads_morphnet_names():
    run = run_from_files("r", {"alive_100": alive(**{"conv1/Conv2D": 3}), "alive_20.json": alive(conv1=5),
                               "cost.jsonl": LOG})
    assert run.steps == (20, 100)
    assert run.alive == ({"conv1": 5}, {"conv1/Conv2D": 3})
    assert [r["step"] for r in run.log] == [0, 100]
    assert run.log[0]["loss"] is None  # a non-finite loss becomes a gap


def test_zip_with_two_run_folders_gives_two_runs():
    data = zip_of({"sweep/a/alive_0": alive(c=4), "sweep/a/cost.jsonl": LOG,
                   "sweep/b/alive_0": alive(c=2), "sweep/b/alive_10": alive(c=1), "README.txt": b"x"})
    found = runs_from_zip("sweep.zip", data)
    assert [r.name for r in found] == ["sweep/sweep/a", "sweep/sweep/b"]
    assert found[1].steps == (0, 10) and found[0].log[1]["cost"] == 5.0


def test_loose_uploads_form_one_run_and_zips_add_theirs():
    found = runs_from_uploads([("alive_0", alive(c=3)), ("cost.jsonl", LOG),
                               ("more.zip", zip_of({"alive_5": alive(c=1)}))])
    assert [(r.name, r.steps) for r in found] == [("more", (5,)), ("run", (0,))]


def test_run_from_dir(tmp_path):
    (tmp_path / "alive_7").write_bytes(alive(c=2))
    (tmp_path / "notes.txt").write_text("ignored")
    assert run_from_dir(tmp_path).steps == (7,)


def test_json_depth_counts_nesting():
    assert json_depth(b'{"a": [1, {"b": 2}]}') == 3
    assert json_depth(b"") == 0


@pytest.mark.parametrize("files, message", [
    ({"alive_1": b"[" * 100 + b"]" * 100}, "nested 100 deep"),
    ({"alive_1": b"{not json"}, "not valid JSON"),
    ({"alive_1": b'{"c": -1}'}, "from op name to alive count"),
    ({"alive_1": b'{"c": 1.5}'}, "from op name to alive count"),
    ({"alive_1": alive(c=1), "cost.jsonl": b'{"cost": 3}\n'}, "line 1: expected an object with an integer 'step'"),
    ({"cost.jsonl": LOG}, "no alive_<step> files"),
])
def test_bad_run_files_get_one_line(files, message):
    with pytest.raises(UnsupportedFileError, match=message):
        run_from_files("r", files)


def test_dir_bounds(tmp_path, monkeypatch):
    with pytest.raises(UnsupportedFileError, match="not a folder"):
        run_from_dir(tmp_path / "missing")
    for step in range(3):
        (tmp_path / f"alive_{step}").write_bytes(alive(c=step))
    monkeypatch.setattr(runs, "MAX_RUN_FILES", 2)
    with pytest.raises(UnsupportedFileError, match="3 run files, over the limit of 2"):
        run_from_dir(tmp_path)
    monkeypatch.setattr(runs, "MAX_RUN_FILES", 10)
    monkeypatch.setattr(runs, "MAX_FILE_BYTES", 5)
    with pytest.raises(UnsupportedFileError, match="alive_0: over 5 bytes"):
        run_from_dir(tmp_path)


def test_zip_bounds_are_checked_from_the_directory(monkeypatch):
    with pytest.raises(UnsupportedFileError, match="not a readable zip archive"):
        runs_from_zip("x.zip", b"PK not really")
    with pytest.raises(UnsupportedFileError, match="no alive_<step> files or cost.jsonl"):
        runs_from_zip("x.zip", zip_of({"readme": b"hi"}))
    # A 3 MB alive file of spaces compresses about 1000 to 1: refused before it is read.
    bomb = zip_of({"alive_1": b"{" + b" " * (3 * 2**20) + b"}"})
    with pytest.raises(UnsupportedFileError, match="to 1, over the limit of 200 \\(a zip bomb\\?\\)"):
        runs_from_zip("bomb.zip", bomb)
    monkeypatch.setattr(runs, "MAX_FILE_BYTES", 10)
    with pytest.raises(UnsupportedFileError, match="x.zip/alive_1: 20 bytes, over the limit of 10"):
        runs_from_zip("x.zip", zip_of({"alive_1": b'{"c": 1}' + b" " * 12}))
    with pytest.raises(UnsupportedFileError, match="alive_1: 11 bytes, over the limit of 10"):
        runs_from_uploads([("alive_1", b'{"c": 1}   ')])
    monkeypatch.setattr(runs, "MAX_FILE_BYTES", 2**20)
    monkeypatch.setattr(runs, "MAX_TOTAL_BYTES", 15)
    with pytest.raises(UnsupportedFileError, match="unpacks to 16 bytes, over the limit of 15"):
        runs_from_zip("x.zip", zip_of({"alive_1": b'{"c": 1}', "alive_2": b'{"c": 2}'}))
    monkeypatch.setattr(runs, "MAX_RUN_FILES", 1)
    with pytest.raises(UnsupportedFileError, match="2 run files, over the limit of 1"):
        runs_from_zip("x.zip", zip_of({"alive_1": b'{"c": 1}', "alive_2": b'{"c": 2}'}))


def test_corrupt_member_is_one_line():
    data = bytearray(zip_of({"alive_1": b'{"conv": 12345678}'}, zipfile.ZIP_STORED))
    at = data.index(b"12345678")
    data[at] = ord("9")  # stored bytes no longer match the CRC
    with pytest.raises(UnsupportedFileError, match="alive_1: cannot be unpacked"):
        runs_from_zip("x.zip", bytes(data))


def test_loose_upload_that_is_no_run_file():
    with pytest.raises(UnsupportedFileError, match="notes.txt: not a run file"):
        runs_from_uploads([("notes.txt", b"hi")])


def test_match_run_renames_morphnet_ops_and_checks_counts():
    from morphscope.errors import CheckpointMismatchError
    from morphscope.importers.load import load_model

    graph = load_model("example:digits")  # res2.conv1.0: 170 output channels
    run = run_from_files("r", {"alive_0": alive(**{"res2.conv1.0/Conv2D": 170, "gone/Conv2D": 3}),
                               "alive_9": alive(**{"res2.conv1.0/Conv2D": 40})})
    assert runs.match_run(graph, run) == [{"res2.conv1.0": 170}, {"res2.conv1.0": 40}]
    too_many = run_from_files("r", {"alive_0": alive(**{"res2.conv1.0": 171})})
    with pytest.raises(CheckpointMismatchError, match="171 alive channels, the model's res2.conv1.0 has only 170"):
        runs.match_run(graph, too_many)


@pytest.mark.parametrize("member, digits", [("alive_" + "7" * 5000, "5,000"), ("alive_1000000000001", "13"),
                                            ("alive_" + "9" * 14 + ".json", "14")])
def test_step_numbers_past_10_to_the_12_are_refused_before_int_reads_them(member, digits):
    # 5,000 digits used to end in "ValueError: Exceeds the limit (4300 digits)".
    with pytest.raises(UnsupportedFileError, match=f"step of {digits} digits; steps are whole numbers "
                                                   "up to 1,000,000,000,000"):
        runs_from_zip("big.zip", zip_of({member: alive(c=1)}))


def test_the_largest_step_is_read():
    assert run_from_files("r", {"alive_1000000000000": alive(c=1)}).steps == (10**12,)


def test_non_ascii_digits_are_no_step():
    # "alive_١٢" (Arabic-Indic digits) is no alive file: int() would have read it as 12.
    with pytest.raises(UnsupportedFileError, match="not a run file"):
        runs_from_uploads([("alive_\u0661\u0662", alive(c=1))])


@pytest.mark.parametrize("line", [b'{"step": 1000000000001}', b'{"step": -1}', b'{"step": 1' + b"0" * 5000 + b"}"])
def test_log_steps_outside_0_to_10_to_the_12_are_refused(line):
    with pytest.raises(UnsupportedFileError, match="cost.jsonl line 2: "):
        run_from_files("r", {"alive_0": alive(c=1), "cost.jsonl": b'{"step": 0}\n' + line + b"\n"})


def test_a_step_logged_twice_is_refused():
    with pytest.raises(UnsupportedFileError, match=r"r/alive_05: step 5 is logged twice \(also in alive_5\); keep one"):
        run_from_files("r", {"alive_5": alive(c=1), "alive_05": alive(c=2)})


def test_steps_per_run_and_records_per_log_are_bounded(monkeypatch):
    monkeypatch.setattr(runs, "MAX_RUN_STEPS", 2)
    files = {f"alive_{s}": alive(c=1) for s in range(3)}
    with pytest.raises(UnsupportedFileError, match="r: 3 alive_<step> files, over the limit of 2 steps per run"):
        run_from_files("r", files)
    monkeypatch.setattr(runs, "MAX_LOG_LINES", 2)
    log = b'{"step": 0}\n\n{"step": 1}\n{"step": 2}\n'  # 3 records; blank lines do not count
    with pytest.raises(UnsupportedFileError, match="r/cost.jsonl: 3 records, over the limit of 2"):
        run_from_files("r", {"alive_0": alive(c=1), "cost.jsonl": log})


def test_a_log_line_deeper_than_the_file_shows_is_one_line():
    # "]]]" first hides the next line's depth from the whole-file count: json.loads refuses it.
    log = b'{"step": 0}\n' + b"]" * 5000 + b"\n" + b"[" * 5000 + b"]" * 5000 + b"\n"
    with pytest.raises(UnsupportedFileError, match="r/cost.jsonl line 2: not valid JSON"):
        run_from_files("r", {"alive_0": alive(c=1), "cost.jsonl": log})


def test_all_uploads_together_are_bounded(monkeypatch):
    # Five zips of 20,000 steps, or eight 16 MB cost logs, each within the per-file limits.
    monkeypatch.setattr(runs, "MAX_RUN_FILES", 3)
    two = zip_of({"alive_0": alive(c=1), "alive_1": alive(c=1)})
    with pytest.raises(UnsupportedFileError, match=r"b.zip: 2 run files, over the limit of 3 for all uploads together \(2 in the uploads before it\)$"):
        runs_from_uploads([("a.zip", two), ("b.zip", two)])
    with pytest.raises(UnsupportedFileError, match=r"alive_9: 1 run files, over the limit of 3 for all uploads together \(3 in the uploads before it\)$"):
        runs_from_uploads([("a.zip", two), ("alive_8", alive(c=1)), ("alive_9", alive(c=1))])
    monkeypatch.setattr(runs, "MAX_RUN_FILES", 100)
    monkeypatch.setattr(runs, "MAX_TOTAL_LOG_BYTES", 30)
    log = b'{"step": 0, "cost": 1.0}\n'  # 25 bytes: one fits, the second does not
    with_log = zip_of({"r/alive_0": alive(c=1), "r/cost.jsonl": log})
    assert len(runs_from_uploads([("a.zip", with_log)])) == 1
    with pytest.raises(UnsupportedFileError, match=r"b.zip: 25 bytes of cost.jsonl, over the limit of 30 bytes for all uploads together "
                                                   r"\(25 bytes in the uploads before it\) \(log every Nth step\)$"):
        runs_from_uploads([("a.zip", with_log), ("b.zip", with_log)])


def test_files_that_are_no_run_files_are_noted_not_dropped(tmp_path):
    data = zip_of({"s/a/alive_0": alive(c=4), "s/b/alive_0": alive(c=2), "README.txt": b"x",
                   "s/a/alive_1.txt": b"x", "s/b/model.pt": b"x", "s/b/more.md": b"x"})
    first, second = runs_from_zip("s.zip", data)
    assert first.notes == ("s.zip: ignored 4 file(s) that are not alive_<step> files or cost.jsonl: "
                           "README.txt, s/a/alive_1.txt, s/b/model.pt and 1 more",)
    assert second.notes == ()
    (tmp_path / "alive_7").write_bytes(alive(c=2))
    (tmp_path / "notes.txt").write_text("ignored")
    assert run_from_dir(tmp_path).notes == (f"{tmp_path.name}: ignored 1 file(s) that are not alive_<step> "
                                            "files or cost.jsonl: notes.txt",)


def test_checkpoint_loading_knows_alive_files_by_the_runs_rule():
    from morphscope.importers.checkpoints import is_alive_json

    assert is_alive_json("learned_structure/alive_12000") and is_alive_json("widths.json")
    assert not is_alive_json("alive_\u0661\u0662")  # Arabic-Indic digits: no step number
    assert not is_alive_json("alive_12.pt")
