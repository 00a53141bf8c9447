"""Training runs: what ``StructureLogger`` or morph-net's StructureExporter writes.

A run is a folder of ``alive_<step>`` files (morph-net's widths JSON: op name -> alive count,
no extension; ``.json`` accepted) and, from our logger, ``cost.jsonl`` (one JSON object per
logged step: ``step``, ``target``, ``cost``, ``loss`` and any user metrics). morph-net's
``learned_structure/`` folders are runs without a cost log.

Runs arrive as a folder, as loose files (several uploads) or as a ``.zip`` of one or more
run folders. Everything is untrusted: member counts, sizes and compression ratios are checked
from the zip directory before anything is read, each member is read with a hard byte cap, and
JSON nesting depth is checked before parsing.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from morphscope.errors import UnsupportedFileError
from morphscope.importers.limits import json_depth

MAX_RUN_FILES = 20_000  # alive files and logs per upload
MAX_FILE_BYTES = 16 * 2**20  # one alive file or cost log, uncompressed
MAX_TOTAL_BYTES = 512 * 2**20  # a whole zip, uncompressed
MAX_COMPRESSION_RATIO = 200  # uncompressed / compressed size of one zip member
MAX_JSON_DEPTH = 16  # alive files are flat objects, log lines flat records
ALIVE_NAME = re.compile(r"alive_(\d+)(?:\.json)?")
COST_LOG = "cost.jsonl"


@dataclass(frozen=True)
class Run:
    """One training run as logged: alive counts per step and the cost log.

    ``steps`` ascend; ``alive[i]`` is the op name -> alive count file of ``steps[i]``;
    ``log`` holds the cost log's records, ascending by step (empty for morph-net runs).
    """

    name: str
    steps: tuple[int, ...]
    alive: tuple[dict[str, int], ...]
    log: tuple[dict[str, Any], ...]


def is_run_file(name: str) -> bool:
    """True for ``alive_<step>`` files and ``cost.jsonl`` logs."""
    base = PurePosixPath(name).name
    return base == COST_LOG or ALIVE_NAME.fullmatch(base) is not None


def _parse_json(where: str, text: bytes) -> Any:
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise UnsupportedFileError(f"{where}: JSON nested {depth} deep; runs hold flat objects "
                                   f"(limit {MAX_JSON_DEPTH})")
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise UnsupportedFileError(f"{where}: not valid JSON ({err})") from err


def _alive_counts(where: str, data: bytes) -> dict[str, int]:
    doc = _parse_json(where, data)
    if not isinstance(doc, dict) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                            for k, v in doc.items()):
        raise UnsupportedFileError(f"{where}: expected a JSON object from op name to alive count")
    return doc


def _log_records(where: str, data: bytes) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        record = _parse_json(f"{where} line {number}", line)
        if not isinstance(record, dict) or type(record.get("step")) is not int:
            raise UnsupportedFileError(f"{where} line {number}: expected an object with an integer "
                                       "'step' (and cost, loss, metrics)")
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
                record[key] = None  # a diverged loss: drawn as a gap
        records.append(record)
    return records


def run_from_files(name: str, files: Mapping[str, bytes]) -> Run:
    """A run from its files' names (only the last path part counts) and bytes.

    Raises
    ------
    UnsupportedFileError
        If no file is an ``alive_<step>`` file, or a file is not the JSON it should be.
    """
    steps: dict[int, dict[str, int]] = {}
    log: list[dict[str, Any]] = []
    for path, data in files.items():
        base = PurePosixPath(path).name
        where = f"{name}/{base}" if base != name else name
        match = ALIVE_NAME.fullmatch(base)
        if match:
            steps[int(match.group(1))] = _alive_counts(where, data)
        elif base == COST_LOG:
            log.extend(_log_records(where, data))
    if not steps:
        raise UnsupportedFileError(f"{name}: no alive_<step> files (a run is a StructureLogger or "
                                   "morph-net learned_structure folder)")
    order = sorted(steps)
    log.sort(key=lambda r: r["step"])
    return Run(name, tuple(order), tuple(steps[s] for s in order), tuple(log))


def run_from_dir(path: str | Path) -> Run:
    """A run from a folder on disk (``StructureLogger``'s ``out_dir``, morph-net's ``learned_structure``)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UnsupportedFileError(f"{folder}: not a folder")
    members = [p for p in folder.iterdir() if p.is_file() and is_run_file(p.name)]
    if len(members) > MAX_RUN_FILES:
        raise UnsupportedFileError(f"{folder}: {len(members)} run files, over the limit of {MAX_RUN_FILES}")
    for member in members:
        if member.stat().st_size > MAX_FILE_BYTES:
            raise UnsupportedFileError(f"{folder.name}/{member.name}: over {MAX_FILE_BYTES} bytes")
    return run_from_files(folder.name, {p.name: p.read_bytes() for p in members})


def runs_from_zip(name: str, data: bytes) -> list[Run]:
    """Every run folder in a ``.zip`` (members grouped by their folder), in folder order.

    Raises
    ------
    UnsupportedFileError
        If the archive is unreadable, holds too many run files, declares members too large or
        too compressed to be honest, or holds no run.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir() and is_run_file(i.filename)]
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise UnsupportedFileError(f"{name}: not a readable zip archive ({err})") from err
    if len(infos) > MAX_RUN_FILES:
        raise UnsupportedFileError(f"{name}: {len(infos)} run files, over the limit of {MAX_RUN_FILES}")
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise UnsupportedFileError(f"{name}: unpacks to {total} bytes, over the limit of {MAX_TOTAL_BYTES}")
    folders: dict[str, dict[str, bytes]] = {}
    for info in infos:
        where = f"{name}/{info.filename}"
        if info.file_size > MAX_FILE_BYTES:
            raise UnsupportedFileError(f"{where}: {info.file_size} bytes, over the limit of {MAX_FILE_BYTES}")
        if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1) and info.file_size > 2**20:
            raise UnsupportedFileError(f"{where}: compressed {info.file_size // max(info.compress_size, 1)}"
                                       f" to 1, over the limit of {MAX_COMPRESSION_RATIO} (a zip bomb?)")
        try:  # zipfile stops at the declared size and checks the CRC
            with archive.open(info) as member:
                content = member.read()
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as err:
            raise UnsupportedFileError(f"{where}: cannot be unpacked ({err})") from err
        folder = str(PurePosixPath(info.filename).parent)
        folders.setdefault(folder, {})[info.filename] = content
    if not folders:
        raise UnsupportedFileError(f"{name}: no alive_<step> files or {COST_LOG} in the archive")
    stem = PurePosixPath(name).stem
    return [run_from_files(stem if folder == "." else f"{stem}/{folder}", files)
            for folder, files in sorted(folders.items())]


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
    named ``run``."""
    runs: list[Run] = []
    loose: dict[str, bytes] = {}
    for upload_name, data in uploads:
        if upload_name.lower().endswith(".zip"):
            runs.extend(runs_from_zip(upload_name, data))
        elif is_run_file(upload_name):
            if len(data) > MAX_FILE_BYTES:
                raise UnsupportedFileError(f"{upload_name}: {len(data)} bytes, over the limit of {MAX_FILE_BYTES}")
            loose[upload_name] = data
        else:
            raise UnsupportedFileError(f"{upload_name}: not a run file; upload a .zip of run folders, "
                                       f"alive_<step> files or {COST_LOG}")
    if loose:
        runs.append(run_from_files("run", loose))
    return runs
