"""Output files written all or none (morphscope.exporters.files)."""

import errno
import os

import pytest

from morphscope.exporters import files
from morphscope.exporters.files import OutputError, check_targets, write_files


def listing(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_all_files_replaced_together_and_no_temporary_left(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.csv"
    a.write_text("old a")
    write_files({a: b"new a", b: b"new b"})
    assert listing(tmp_path) == {"a.json": b"new a", "b.csv": b"new b"}
    umask = os.umask(0)
    os.umask(umask)
    assert b.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_failed_second_write_changes_nothing(tmp_path, monkeypatch):
    a, b = tmp_path / "a.json", tmp_path / "b.csv"
    a.write_text("old a")
    b.write_text("old b")
    write = files._write_fully
    calls = []

    def disk_full_on_second(fd, data):
        calls.append(data)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(fd, data)

    monkeypatch.setattr(files, "_write_fully", disk_full_on_second)
    with pytest.raises(OutputError, match=f"cannot write {b}: No space left on device"):
        write_files({a: b"new a", b: b"new b"})
    assert listing(tmp_path) == {"a.json": b"old a", "b.csv": b"old b"}


def test_named_temporary_files_where_o_tmpfile_is_missing(tmp_path, monkeypatch):
    # Without O_TMPFILE (macOS, some filesystems) the temporaries have names: removed on failure.
    monkeypatch.delattr(os, "O_TMPFILE")
    a, b = tmp_path / "a.json", tmp_path / "b.csv"
    write_files({a: b"new a"})
    assert listing(tmp_path) == {"a.json": b"new a"}

    def fail(fd, data):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(files, "_write_fully", fail)
    with pytest.raises(OutputError, match="Input/output error"):
        write_files({a: b"newer a", b: b"new b"})
    assert listing(tmp_path) == {"a.json": b"new a"}


def test_symlinked_target_replaces_the_file_it_points_to(tmp_path):
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    link.symlink_to(real)
    resolved = check_targets({"--out": link}, {})
    write_files({resolved["--out"]: b"new"})
    assert link.is_symlink() and real.read_bytes() == b"new"


def test_read_only_existing_file_is_refused(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("keep")
    target.chmod(0o444)  # marked read-only by its owner: refused, even for root
    with pytest.raises(OutputError, match="the existing file is read-only"):
        check_targets({"--out": target}, {})


def test_write_rebuilt_model_checks_its_path_before_rebuilding(tmp_path):
    from morphscope.exporters.export import write_rebuilt_model

    # The model arguments are never touched: the folder is refused first.
    with pytest.raises(OutputError, match="model file .*: is a folder"):
        write_rebuilt_model(None, None, None, None, tmp_path)
