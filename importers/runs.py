"""Training runs: what ``StructureLogger`` or morph-net's StructureExporter writes.

A run is a folder of ``alive_<step>`` files (morph-net's widths JSON: op name -> alive count,
no extension; ``.json`` accepted) and, from our logger, ``cost.jsonl`` (one JSON object per
logged step: ``step``, ``target``, ``cost``, ``loss`` and any user metrics). morph-net's
``learned_structure/`` folders are runs without a cost log.

Runs arrive as a folder, as loose files (several uploads) or as a ``.zip`` of one or more
run folders. Everything is untrusted: member counts, sizes and compression ratios are checked
from the zip directory before anything is read, each member is read with a hard byte cap, and
JSON nesting depth is checked before parsing. Step numbers are read from at most 13 digits
(up to ``MAX_STEP``), a run holds at most ``MAX_RUN_STEPS`` steps and a cost log at most
``MAX_LOG_LINES`` records, and all uploads together at most ``MAX_RUN_FILES`` run files: the
explorer computes every step of every run. Files that are no run files are listed in the
run's ``notes``, never dropped silently.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from morphscope.errors import UnsupportedFileError
from morphscope.importers.limits import ZIP_ERRORS, describe_error, json_depth
from morphscope.units import human_bytes

MAX_RUN_FILES = 20_000  # alive files and logs in all uploads together
MAX_RUN_STEPS = 10_000  # alive files of one run (1,000 steps of resnet50 take the explorer ~2 s)
MAX_LOG_LINES = 100_000  # records of one cost log
MAX_STEP = 10**12  # the largest step number read (13 digits)
MAX_FILE_BYTES = 16 * 2**20  # one alive file or cost log, uncompressed
MAX_TOTAL_BYTES = 512 * 2**20  # a whole zip, uncompressed
MAX_TOTAL_LOG_BYTES = 64 * 2**20  # the cost logs of all uploads together (~0.35 s per 100,000 records)
MAX_COMPRESSION_RATIO = 200  # uncompressed / compressed size of one zip member
MAX_JSON_DEPTH = 16  # alive files are flat objects, log lines flat records
ALIVE_NAME = re.compile(r"alive_([0-9]+)(?:\.json)?")  # ASCII digits: int() would read any Unicode digit
MAX_SHOWN_NAME = 60  # characters of a file name quoted in a message
COST_LOG = "cost.jsonl"


@dataclass
class UploadBudget:
    """What the uploads read so far may still add: run files and cost-log bytes, spent before
    the bytes are read (a zip's from its directory)."""

    files: int = field(default_factory=lambda: MAX_RUN_FILES)
    log_bytes: int = field(default_factory=lambda: MAX_TOTAL_LOG_BYTES)

    def spend(self, where: str, files: int, log_bytes: int) -> None:
        """Take ``files`` run files and ``log_bytes`` of cost logs, or refuse in one line."""
        files_before, log_bytes_before = MAX_RUN_FILES - self.files, MAX_TOTAL_LOG_BYTES - self.log_bytes
        if files > self.files:
            raise UnsupportedFileError(f"{where}: {files:,} run files, over the limit of {MAX_RUN_FILES:,} "
                                       "for all uploads together"
                                       + (f" ({files_before:,} in the uploads before it)" if files_before else ""))
        if log_bytes > self.log_bytes:
            raise UnsupportedFileError(
                f"{where}: {human_bytes(log_bytes)} of {COST_LOG}, over the limit of "
                f"{human_bytes(MAX_TOTAL_LOG_BYTES)} for all uploads together"
                + (f" ({human_bytes(log_bytes_before)} in the uploads before it)" if log_bytes_before else "")
                + " (log every Nth step)")
        self.files -= files
        self.log_bytes -= log_bytes


@dataclass(frozen=True)
class Run:
    """One training run as logged: alive counts per step and the cost log.

    ``steps`` ascend; ``alive[i]`` is the op name -> alive count file of ``steps[i]``;
    ``log`` holds the cost log's records, ascending by step (empty for morph-net runs);
    ``notes`` say which files were ignored (not alive files or cost logs).
    """

    name: str
    steps: tuple[int, ...]
    alive: tuple[dict[str, int], ...]
    log: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = ()


def is_run_file(name: str) -> bool:
    """True for ``alive_<step>`` files and ``cost.jsonl`` logs."""
    base = PurePosixPath(name).name
    return base == COST_LOG or ALIVE_NAME.fullmatch(base) is not None


def shown_name(name: str) -> str:
    """A file name as messages quote it: at most ``MAX_SHOWN_NAME`` characters, the middle
    elided (a 5,000-digit step stays a one-line message)."""
    if len(name) <= MAX_SHOWN_NAME:
        return name
    keep = (MAX_SHOWN_NAME - 3) // 2
    return f"{name[:keep]}...{name[-keep:]}"


def _step(where: str, digits: str) -> int:
    """A step number from ASCII digits, refused past ``MAX_STEP`` before ``int`` reads them."""
    if len(digits) > len(str(MAX_STEP)) or int(digits) > MAX_STEP:
        raise UnsupportedFileError(f"{where}: step of {len(digits):,} digits; steps are whole "
                                   f"numbers up to {MAX_STEP:,}")
    return int(digits)


def _check_depth(where: str, text: bytes) -> None:
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise UnsupportedFileError(f"{where}: JSON nested {depth} deep; runs hold flat objects "
                                   f"(limit {MAX_JSON_DEPTH})")


def _loads(where: str, text: bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # JSON and Unicode errors are ValueErrors
        raise UnsupportedFileError(f"{where}: not valid JSON ({describe_error(err)})") from err


def _parse_json(where: str, text: bytes) -> Any:
    _check_depth(where, text)
    return _loads(where, text)


def _alive_counts(where: str, data: bytes) -> dict[str, int]:
    doc = _parse_json(where, data)
    if not isinstance(doc, dict) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                            for k, v in doc.items()):
        raise UnsupportedFileError(f"{where}: expected a JSON object from op name to alive count")
    return doc


def _log_records(where: str, data: bytes) -> list[dict[str, Any]]:
    """A cost log's records; nesting is counted once over the whole file. Only unmatched
    closing brackets can hide a line's depth from that count, and ``json.loads`` stops at them
    first (a RecursionError is caught all the same)."""
    lines = [(number, line) for number, line in enumerate(data.splitlines(), 1) if line.strip()]
    if len(lines) > MAX_LOG_LINES:
        raise UnsupportedFileError(f"{where}: {len(lines):,} records, over the limit of "
                                   f"{MAX_LOG_LINES:,} (log every Nth step)")
    _check_depth(where, data)
    records = []
    for number, line in lines:
        record = _loads(f"{where} line {number}", line)
        step = record.get("step") if isinstance(record, dict) else None
        if type(step) is not int or not 0 <= step <= MAX_STEP:
            raise UnsupportedFileError(f"{where} line {number}: expected an object with an integer "
                                       f"'step' from 0 to {MAX_STEP:,} (and cost, loss, metrics)")
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
                record[key] = None  # a diverged loss: drawn as a gap
        records.append(record)
    return records


def run_from_files(name: str, files: Mapping[str, bytes], notes: tuple[str, ...] = ()) -> Run:
    """A run from its files' names (only the last path part counts) and bytes.

    Parameters
    ----------
    notes : tuple of str
        What the caller left out (ignored files), kept with the run.

    Raises
    ------
    UnsupportedFileError
        If no file is an ``alive_<step>`` file, a run has more than ``MAX_RUN_STEPS``, a step
        number is over ``MAX_STEP`` or logged twice, or a file is not the JSON it should be.
    """
    alive_files = sum(ALIVE_NAME.fullmatch(PurePosixPath(path).name) is not None for path in files)
    if alive_files > MAX_RUN_STEPS:
        raise UnsupportedFileError(f"{name}: {alive_files:,} alive_<step> files, over the limit of "
                                   f"{MAX_RUN_STEPS:,} steps per run (keep every Nth step)")
    steps: dict[int, dict[str, int]] = {}
    step_files: dict[int, str] = {}
    log: list[dict[str, Any]] = []
    for path, data in files.items():
        base = PurePosixPath(path).name
        where = f"{name}/{shown_name(base)}" if base != name else shown_name(name)
        match = ALIVE_NAME.fullmatch(base)
        if match:
            step = _step(where, match.group(1))
            if step in step_files:
                raise UnsupportedFileError(f"{where}: step {step:,} is logged twice (also in "
                                           f"{shown_name(step_files[step])}); keep one")
            steps[step], step_files[step] = _alive_counts(where, data), base
        elif base == COST_LOG:
            log.extend(_log_records(where, data))
    if not steps:
        raise UnsupportedFileError(f"{name}: no alive_<step> files (a run is a StructureLogger or "
                                   "morph-net learned_structure folder)")
    order = sorted(steps)
    log.sort(key=lambda r: r["step"])
    return Run(name, tuple(order), tuple(steps[s] for s in order), tuple(log), notes)


def _ignored_note(where: str, names: list[str]) -> tuple[str, ...]:
    """The note listing files that are not run files (none: no note)."""
    if not names:
        return ()
    listed = ", ".join(shown_name(n) for n in names[:3]) + (f" and {len(names) - 3:,} more" if len(names) > 3 else "")
    return (f"{where}: ignored {len(names):,} file(s) that are not alive_<step> files or "
            f"{COST_LOG}: {listed}",)


def run_from_dir(path: str | Path) -> Run:
    """A run from a folder on disk (``StructureLogger``'s ``out_dir``, morph-net's ``learned_structure``)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UnsupportedFileError(f"{folder}: not a folder")
    files = [p for p in folder.iterdir() if p.is_file()]
    members = [p for p in files if is_run_file(p.name)]
    if len(members) > MAX_RUN_FILES:
        raise UnsupportedFileError(f"{folder}: {len(members)} run files, over the limit of {MAX_RUN_FILES}")
    for member in members:
        if member.stat().st_size > MAX_FILE_BYTES:
            raise UnsupportedFileError(f"{folder.name}/{member.name}: over {MAX_FILE_BYTES} bytes")
    ignored = sorted(p.name for p in files if not is_run_file(p.name))
    return run_from_files(folder.name, {p.name: p.read_bytes() for p in members},
                          _ignored_note(folder.name, ignored))


def runs_from_zip(name: str, data: bytes, budget: UploadBudget | None = None) -> list[Run]:
    """Every run folder in a ``.zip`` (members grouped by their folder), in folder order; the
    first run's notes list the members that are no run files.

    Parameters
    ----------
    budget : UploadBudget, optional
        What the uploads before it left (default: a whole budget for this archive alone).

    Raises
    ------
    UnsupportedFileError
        If the archive is unreadable, holds too many run files, declares members too large or
        too compressed to be honest, or holds no run.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        files = [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise UnsupportedFileError(f"{name}: not a readable zip archive ({err})") from err
    infos = [i for i in files if is_run_file(i.filename)]
    (budget or UploadBudget()).spend(name, len(infos), sum(
        i.file_size for i in infos if PurePosixPath(i.filename).name == COST_LOG))
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise UnsupportedFileError(f"{name}: unpacks to {total} bytes, over the limit of {MAX_TOTAL_BYTES}")
    folders: dict[str, dict[str, bytes]] = {}
    for info in infos:
        where = f"{name}/{shown_name(info.filename)}"
        if info.file_size > MAX_FILE_BYTES:
            raise UnsupportedFileError(f"{where}: {info.file_size} bytes, over the limit of {MAX_FILE_BYTES}")
        if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1) and info.file_size > 2**20:
            raise UnsupportedFileError(f"{where}: compressed {info.file_size // max(info.compress_size, 1)}"
                                       f" to 1, over the limit of {MAX_COMPRESSION_RATIO} (a zip bomb?)")
        try:  # zipfile stops at the declared size and checks the CRC
            with archive.open(info) as member:
                content = member.read()
        except ZIP_ERRORS as err:
            raise UnsupportedFileError(f"{where}: cannot be unpacked ({describe_error(err)})") from err
        folder = str(PurePosixPath(info.filename).parent)
        folders.setdefault(folder, {})[info.filename] = content
    if not folders:
        raise UnsupportedFileError(f"{name}: no alive_<step> files or {COST_LOG} in the archive")
    stem = PurePosixPath(name).stem
    notes = _ignored_note(name, [i.filename for i in files if not is_run_file(i.filename)])
    return [run_from_files(stem if folder == "." else f"{stem}/{folder}", members, notes if number == 0 else ())
            for number, (folder, members) in enumerate(sorted(folders.items()))]


def match_run(graph: Any, run: Run) -> list[dict[str, int]]:
    """Every step's alive counts keyed by the graph's op names (morph-net's ``conv1/Conv2D``
    read as ``conv1``), each distinct name matched once.

    Raises
    ------
    CheckpointMismatchError
        If no name matches the graph, or a step counts more channels than its op has.
    """
    from morphscope.errors import CheckpointMismatchError
    from morphscope.importers.checkpoints import match_alive_counts

    most: dict[str, int] = {}
    for counts in run.alive:
        for name, count in counts.items():
            most[name] = max(count, most.get(name, 0))
    match_alive_counts(graph, most, run.name)  # names and the largest counts checked once
    renamed = {}
    for name in most:
        try:
            [renamed[name]] = match_alive_counts(graph, {name: 0}, run.name).alive_counts
        except CheckpointMismatchError:
            continue  # not in the model: ignored, as in a single alive file
    return [{renamed[n]: c for n, c in counts.items() if n in renamed} for counts in run.alive]


def runs_from_uploads(uploads: list[tuple[str, bytes]]) -> list[Run]:
    """Runs from uploaded files: each ``.zip`` gives its runs; the loose files, together, one run
    named ``run``. All uploads together hold at most ``MAX_RUN_FILES`` run files.

    Raises
    ------
    UnsupportedFileError
        For a file that is no run file or zip, or any refusal of :func:`runs_from_zip` and
        :func:`run_from_files`.
    """
    runs: list[Run] = []
    loose: dict[str, bytes] = {}
    budget = UploadBudget()
    for upload_name, data in uploads:
        shown = shown_name(upload_name)
        if upload_name.lower().endswith(".zip"):
            runs.extend(runs_from_zip(upload_name, data, budget))
        elif is_run_file(upload_name):
            if len(data) > MAX_FILE_BYTES:
                raise UnsupportedFileError(f"{shown}: {len(data)} bytes, over the limit of {MAX_FILE_BYTES}")
            budget.spend(shown, 1, len(data) if PurePosixPath(upload_name).name == COST_LOG else 0)
            loose[upload_name] = data
        else:
            raise UnsupportedFileError(f"{shown}: not a run file; upload a .zip of run folders, "
                                       f"alive_<step> files or {COST_LOG}")
    if loose:
        runs.append(run_from_files("run", loose))
    return runs

