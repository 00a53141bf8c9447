"""Output files that never destroy data: checked up front, written whole or not at all.

A command first checks every target (:func:`check_targets`): no target may be one of the
command's inputs or another target, and each must be a file that can be created or replaced.
It then computes every output as bytes, and only then :func:`write_files` writes them: each to
a temporary file in its target's own folder, flushed to disk, and renamed over its target once
all of them are complete. Until that rename the previous files are untouched; a failure removes
the temporary files, and a killed process leaves none behind where the filesystem supports
nameless temporary files (Linux ``O_TMPFILE``: they vanish with the process).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Mapping

from morphscope.errors import MorphScopeError

_FILE_MODE = 0o666  # before the umask, as open() creates files
_CHUNK_BYTES = 1 << 20


class OutputError(MorphScopeError):
    """An output target that cannot or must not be written (an input, a folder, no permission)."""


def check_targets(targets: Mapping[str, str | Path], inputs: Mapping[str, str | Path]) -> dict[str, Path]:
    """Refuse targets that would overwrite an input or each other, or cannot be written.

    Parameters
    ----------
    targets : mapping of str to path
        Option name (``"--out"``) to the file it names.
    inputs : mapping of str to path
        Option name to a file the same command reads (model, checkpoints); files that do not
        exist are ignored.

    Returns
    -------
    resolved : dict of str to Path
        Option name to the file that will be written (symbolic links followed: the file a
        link points to is replaced, the link stays).

    Raises
    ------
    OutputError
        One line naming the option and its file, and the input or target it collides with, or
        why the file cannot be written (a folder, a missing folder, no permission).
    """
    resolved = {option: Path(os.path.realpath(path)) for option, path in targets.items()}
    for option, path in resolved.items():
        _check_writable(option, str(targets[option]), path)
    named = [(f"input {option}", Path(path)) for option, path in inputs.items()]
    for option, path in resolved.items():
        for other, other_path in named:
            if _same_file(path, other_path):
                raise OutputError(f"{option} {targets[option]} would overwrite {other} "
                                  f"{other_path}; choose another file name")
        named.append((option, path))
    return resolved


def _same_file(a: Path, b: Path) -> bool:
    """The same file by resolved path, or by device and inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either one does not exist yet
        return False


def _check_writable(option: str, given: str, path: Path) -> None:
    """One line if ``given`` names a folder (a trailing separator) or ``path`` is a folder, a
    symbolic link loop, a special file, read-only or in a missing folder."""
    if path.is_dir():
        raise OutputError(f"{option} {given}: is a folder; name a file in it")
    if given.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        raise OutputError(f"{option} {given}: ends in a path separator, so it names a folder; "
                          "name a file")
    if path.is_symlink():  # realpath stops at a link it cannot resolve: a loop
        raise OutputError(f"{option} {given}: a symbolic link loop; name a file or a link to one")
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise OutputError(f"{option} {given}: not a regular file; name a new or regular file")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{option} {given}: no such folder {folder}")
    try:
        _discard(*_open_temporary(folder))
    except OSError as err:
        raise OutputError(f"{option} {given}: cannot create files in {folder} "
                          f"({err.strerror})") from err
    if path.exists() and not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise OutputError(f"{option} {given}: the existing file is read-only (chmod u+w to "
                          "let it be replaced)")


def write_files(contents: Mapping[Path, bytes]) -> None:
    """Write every ``path: data`` pair, all or none: each to a temporary file beside its
    target, fsynced, then every temporary file renamed over its target.

    Raises
    ------
    OutputError
        If a file cannot be written; no target has changed and no temporary file remains.
    """
    opened: list[tuple[Path, int, str | None]] = []
    linked: list[tuple[Path, str]] = []
    path = None
    try:
        for path, data in contents.items():
            fd, name = _open_temporary(path.parent)
            opened.append((path, fd, name))
            _write_fully(fd, data)
            _keep_mode(fd, path)
            os.fsync(fd)
        for path, fd, name in opened:
            linked.append((path, _link(fd, name, path.parent)))
    except OSError as err:
        for _, fd, name in opened:
            _discard(fd, name)
        for _, name in linked:
            _discard(None, name)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    for _, fd, _ in opened:
        os.close(fd)
    for path, name in linked:
        os.replace(name, path)  # same folder, checked writable: a rename does not fail here
    for folder in {path.parent for path in contents}:
        _fsync_folder(folder)


def _open_temporary(folder: Path) -> tuple[int, str | None]:
    """A writable temporary file in ``folder``: ``(fd, None)`` if nameless, else ``(fd, name)``."""
    try:
        return os.open(folder, os.O_TMPFILE | os.O_WRONLY, _FILE_MODE), None
    except (AttributeError, OSError):  # no O_TMPFILE here (not Linux, or the filesystem lacks it)
        fd, name = tempfile.mkstemp(dir=folder, prefix=".morphscope-", suffix=".partial")
        return fd, name


def _write_fully(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:_CHUNK_BYTES]):]


def _keep_mode(fd: int, path: Path) -> None:
    """The replaced file's permissions, or open()'s defaults for a new file."""
    if path.exists():
        os.fchmod(fd, stat.S_IMODE(path.stat().st_mode))
        return
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, _FILE_MODE & ~umask)


def _link(fd: int, name: str | None, folder: Path) -> str:
    """Give a nameless temporary file a (hidden, unique) name in ``folder``."""
    if name is not None:
        return name
    candidate = f".morphscope-{os.urandom(12).hex()}.partial"
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:  # a dir_fd makes os.link call linkat(AT_SYMLINK_FOLLOW), which follows /proc/self/fd
        os.link(f"/proc/self/fd/{fd}", candidate, dst_dir_fd=folder_fd, follow_symlinks=True)
    finally:
        os.close(folder_fd)
    return os.path.join(folder, candidate)


def _discard(fd: int | None, name: str | None) -> None:
    """Close and remove a temporary file (no error if already gone)."""
    if fd is not None:
        os.close(fd)
    if name is not None and os.path.exists(name):
        os.unlink(name)


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable (a folder fsync; skipped where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
