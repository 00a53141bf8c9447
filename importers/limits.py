"""Limits on what a user's file may make MorphScope do, checked on declared sizes first.

Every number a file declares (a zip member's uncompressed size, a JSON document's length and
nesting depth, a tensor's shape, the parameters a Keras config would build) is checked against
a :class:`Limits` setting *before* anything of that size is allocated. The worker that parses
user files (:mod:`morphscope.importers.isolation`) also runs under ``max_memory_bytes``,
``max_cpu_s`` and ``max_open_files`` as hard operating-system limits, so a check this module
misses still ends in a one-line error, not a dead server.

Every refusal is an :class:`~morphscope.errors.UnsupportedFileError` (or
:class:`~morphscope.errors.UnsafeFileError` for paths that point outside the file) with one
line naming the file by the user's own name, the number and the limit.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from morphscope.errors import UnsafeFileError, UnsupportedFileError
from morphscope.units import human_bytes

MAX_MEMORY_BYTES = 2 * 2**30  # address space a parse may add on top of the parser's start-up
MAX_CPU_S = 60  # CPU seconds one parse may use
MAX_WALL_S = 120  # wall-clock seconds before a parse that waits (not computes) is stopped
MAX_OPEN_FILES = 256  # file descriptors open at once in the parser
MAX_FILE_BYTES = 2 * 2**30  # a model or checkpoint file on disk
MAX_UNZIPPED_BYTES = 4 * 2**30  # all members of one zip archive, uncompressed
MAX_ZIP_RATIO = 200  # uncompressed / compressed size of one member (a zip bomb is ~1000x)
MAX_JSON_BYTES = 512 * 2**20  # one JSON document (a .pt2's graph, a Keras config, alive file)
MAX_JSON_DEPTH = 100  # nesting of [ and {; real files stay under 20
MAX_PARAMS = 2 * 10**9  # parameters a Keras config may declare (about 8 GB in float32)
MAX_TENSOR_BYTES = 2 * 2**30  # one tensor a header declares
# Largest settings a caller may ask for: above them a number is a typo, and the operating
# system or select() would overflow on it (setrlimit, a timeout of 1e300 s).
LIMIT_CEILINGS = {"max_memory_bytes": 2**40, "max_cpu_s": 86_400, "max_wall_s": 86_400}


@dataclass(frozen=True)
class Limits:
    """What one parse of a user's file may use; the defaults are the module constants.

    Parameters
    ----------
    max_memory_bytes : int
        Address space the parsing worker may add to its own start-up (RLIMIT_AS).
    max_cpu_s : int
        CPU seconds of the parsing worker (RLIMIT_CPU).
    max_wall_s : float
        Wall-clock seconds before a worker that waits instead of computing is stopped.
    max_open_files : int
        File descriptors the worker may hold (RLIMIT_NOFILE).
    max_file_bytes, max_unzipped_bytes, max_zip_ratio, max_json_bytes, max_json_depth,
    max_params, max_tensor_bytes : int
        Declared sizes refused before anything is allocated.
    """

    max_memory_bytes: int = MAX_MEMORY_BYTES
    max_cpu_s: int = MAX_CPU_S
    max_wall_s: float = MAX_WALL_S
    max_open_files: int = MAX_OPEN_FILES
    max_file_bytes: int = MAX_FILE_BYTES
    max_unzipped_bytes: int = MAX_UNZIPPED_BYTES
    max_zip_ratio: int = MAX_ZIP_RATIO
    max_json_bytes: int = MAX_JSON_BYTES
    max_json_depth: int = MAX_JSON_DEPTH
    max_params: int = MAX_PARAMS
    max_tensor_bytes: int = MAX_TENSOR_BYTES

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            ceiling = LIMIT_CEILINGS.get(key, math.inf)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= ceiling):
                raise UnsupportedFileError(f"limit {key}={value!r}: expected a finite positive number"
                                           + (f" up to {ceiling:,}" if ceiling < math.inf else ""))

    def to_dict(self) -> dict[str, Any]:
        """Plain data, to hand the limits to the worker."""
        return asdict(self)


DEFAULT_LIMITS = Limits()
# What reading a hostile zip member may raise (RuntimeError: an encrypted member).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, zlib.error,
              EOFError, OSError, ValueError, RuntimeError)
_BOMB_FLOOR_BYTES = 2**20  # members smaller than this are never called bombs


def check_member_name(name: str, member: str) -> None:
    """Refuse a zip member whose name points outside the archive (absolute, ``..``, drive).

    Raises
    ------
    UnsafeFileError
        Naming the file and the member.
    """
    parts = re.split(r"[\\/]", member)
    if member.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member) or ".." in parts:
        raise UnsafeFileError(f"{name}: refused, zip member {member!r} points outside the archive")


def check_members(name: str, members: list[str], file_sizes: Any, compress_sizes: Any,
                  limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse an archive whose members point outside it (:func:`check_member_name`), one of
    which inflates past ``max_zip_ratio`` (a zip bomb), or whose members together hold more
    than ``max_unzipped_bytes``; sizes are sequences or arrays in member order, checked
    together with numpy (10^6 members: milliseconds).

    Raises
    ------
    UnsupportedFileError, UnsafeFileError
        Naming the file and the first member over a limit.
    """
    _check_member_names(name, members)
    file_sizes = np.asarray(file_sizes, dtype=np.int64)
    ratios = file_sizes / np.maximum(np.asarray(compress_sizes, dtype=np.int64), 1)
    bombs = np.flatnonzero((file_sizes > _BOMB_FLOOR_BYTES) & (ratios > limits.max_zip_ratio))
    if bombs.size:
        first = int(bombs[0])
        raise UnsupportedFileError(f"{name}: zip member {members[first]} inflates {ratios[first]:,.0f}x "
                                   f"to {human_bytes(int(file_sizes[first]))}; limit "
                                   f"{limits.max_zip_ratio}x (a zip bomb?)")
    total = int(file_sizes.sum())
    if total > limits.max_unzipped_bytes:
        raise UnsupportedFileError(f"{name}: zip members hold {human_bytes(total)} uncompressed; "
                                   f"limit {human_bytes(limits.max_unzipped_bytes)}")


def _check_member_names(name: str, members: list[str]) -> None:
    """:func:`check_member_name` on every member, after one scan of all names together: only
    archives where some name could point outside (a leading slash or drive, a ``..``) are
    checked name by name (10^6 members: a regex per name took seconds)."""
    joined = "\n".join(members)
    if ".." in joined or "\n/" in joined or "\n\\" in joined or joined[:1] in ("/", "\\") or (
            ":" in joined and re.search(r"(^|\n)[A-Za-z]:", joined)):
        for member in members:
            check_member_name(name, member)


def open_zip(source: Any, name: str, limits: Limits = DEFAULT_LIMITS) -> zipfile.ZipFile:
    """Open a zip archive after checking every member's declared size, ratio and name.

    Parameters
    ----------
    source : path or file object
        The archive.
    name : str
        The user's name for the file, used in messages.

    Raises
    ------
    UnsupportedFileError
        Not a zip, or a member over ``max_unzipped_bytes`` / ``max_zip_ratio``.
    UnsafeFileError
        A member named outside the archive.
    """
    try:
        archive = zipfile.ZipFile(source)
        infos = archive.infolist()
    except ZIP_ERRORS as err:
        raise UnsupportedFileError(f"{name}: not a readable zip archive ({describe_error(err)})") from err
    try:
        check_members(name, [info.filename for info in infos], [info.file_size for info in infos],
                      [info.compress_size for info in infos], limits)
    except BaseException:
        archive.close()
        raise
    return archive


def read_member(archive: zipfile.ZipFile, member: str, name: str, max_bytes: int) -> bytes:
    """The bytes of one zip member, refused above ``max_bytes`` (declared or actual).

    Raises
    ------
    UnsupportedFileError
        Missing member, corrupt data (CRC, truncated, unknown compression) or too large.
    """
    try:
        info = archive.getinfo(member)
    except KeyError as err:
        raise UnsupportedFileError(f"{name}: zip archive without {member}") from err
    if info.file_size > max_bytes:
        raise UnsupportedFileError(f"{name}: {member} is {human_bytes(info.file_size)} "
                                   f"uncompressed; limit {human_bytes(max_bytes)}")
    try:
        with archive.open(info) as handle:
            data = handle.read(max_bytes + 1)
    except ZIP_ERRORS as err:
        raise UnsupportedFileError(f"{name}: corrupt zip member {member} ({describe_error(err)})") from err
    if len(data) > max_bytes:
        raise UnsupportedFileError(f"{name}: {member} inflates past {human_bytes(max_bytes)}")
    return data


_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def json_depth(data: bytes) -> int:
    """How deeply ``[`` and ``{`` nest in a JSON text (brackets inside strings skipped).

    Vectorized over the bytes with numpy (no recursion, no regular expression: a 60 MB string
    literal made ``re`` use gigabytes); memory is a few bytes per input byte plus 8 per quote,
    backslash and bracket.

    Examples
    --------
    >>> json_depth(b'{"a": [1, {"b": "]]{["}], "c\\\\": "\\"["}')
    3
    """
    codes = np.frombuffer(data, dtype=np.uint8)
    escaped = np.zeros(codes.size + 1, dtype=bool)
    slashes = np.flatnonzero(codes == ord("\\"))
    if slashes.size:  # a run of L backslashes escapes the next byte when L is odd
        breaks = np.flatnonzero(np.diff(slashes) != 1)
        starts = slashes[np.concatenate(([0], breaks + 1))]
        ends = slashes[np.concatenate((breaks, [slashes.size - 1]))]
        escaped[(ends + 1)[(ends - starts + 1) % 2 == 1]] = True
    quotes = np.flatnonzero((codes == ord('"')) & ~escaped[:-1])
    steps = _BRACKET_STEP[codes]
    brackets = np.flatnonzero(steps)
    outside = np.searchsorted(quotes, brackets) % 2 == 0  # an even number of quotes before it
    return int(np.cumsum(steps[brackets[outside]], dtype=np.int64).max(initial=0))


def loads_json(data: bytes | str, name: str, limits: Limits = DEFAULT_LIMITS, what: str = "JSON") -> Any:
    """``json.loads`` after checking the text's length and nesting depth.

    Parameters
    ----------
    what : str
        What the document is, for messages (``"graph JSON"``, ``"Keras config"``).

    Raises
    ------
    UnsupportedFileError
        Over ``max_json_bytes`` or ``max_json_depth``, or not JSON.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > limits.max_json_bytes:
        raise UnsupportedFileError(f"{name}: {what} is {human_bytes(len(raw))}; limit "
                                   f"{human_bytes(limits.max_json_bytes)}")
    depth = json_depth(raw)
    if depth > limits.max_json_depth:
        raise UnsupportedFileError(f"{name}: {what} nests {depth:,} levels deep; limit "
                                   f"{limits.max_json_depth}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSON and Unicode errors are ValueErrors
        raise UnsupportedFileError(f"{name}: {what} is not valid JSON ({describe_error(err)})") from err


def check_tensor_shape(name: str, key: str, shape: Iterable[Any], itemsize: int,
                       limits: Limits = DEFAULT_LIMITS) -> tuple[int, ...]:
    """A declared tensor shape as ints, refused if malformed or over ``max_tensor_bytes``.

    Raises
    ------
    UnsupportedFileError
        Naming the file, the tensor and its shape.
    """
    dims = tuple(shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise UnsupportedFileError(f"{name}: tensor {key} has a malformed shape {list(dims)!r}")
    nbytes = math.prod(dims) * itemsize
    if nbytes > limits.max_tensor_bytes:
        raise UnsupportedFileError(f"{name}: tensor {key} declares shape {list(dims)} "
                                   f"({human_bytes(nbytes)}); limit {human_bytes(limits.max_tensor_bytes)}")
    return dims


def check_param_count(name: str, params: int, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse a model whose config declares more than ``max_params`` parameters."""
    if params > limits.max_params:
        raise UnsupportedFileError(f"{name}: the model config declares {params:,} parameters "
                                   f"(about {human_bytes(4 * params)} in float32); limit "
                                   f"{limits.max_params:,}")


def describe_error(err: BaseException) -> str:
    """``TypeName: first 200 characters of the message``, on one line."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__
