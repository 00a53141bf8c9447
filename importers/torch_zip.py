"""PyTorch state_dict files read without torch: a restricted unpickler over the zip format.

``torch.load(weights_only=True)`` is safe but runs a pure-Python unpickler: a state_dict with
10^6 keys takes minutes. A plain state_dict (dicts of tensors, as ``torch.save(model.state_dict())``
writes it) needs only four globals: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter`` and the typed storage classes. :func:`read_torch_zip` maps
exactly those to small local stand-ins (nothing of torch runs), unpickles with Python's C
unpickler, reads only the storages whose values are wanted (``os.pread`` on the stored zip
members: no mmap, no whole-file read) and returns ``None`` for anything else, which then goes
to ``torch.load(weights_only=True)`` and its refusals.

Speed at 10^6 keys (one zip member per tensor): the zip's central directory is read with
numpy (:func:`read_zip_directory`, not ``zipfile``'s 10^6 ``ZipInfo`` objects), the
unpickler's per-tensor callbacks are C callables (``tuple`` for persistent ids,
:class:`_TensorArgs` keeping the rebuild arguments), every record is validated in bulk
afterwards (:meth:`StorageReader.table`), and the wanted storages are read in a few large
``pread`` windows and gathered with numpy (:meth:`StorageReader.values`).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import io
import itertools
import os
import pickle
import pickletools
import secrets
import struct
import zipfile
import zlib
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from morphscope.errors import UnsupportedFileError
from morphscope.importers.limits import (DEFAULT_LIMITS, Limits, check_members, check_tensor_shape,
                                         open_zip, read_member)
from morphscope.units import human_bytes


class _StorageType(NamedTuple):
    name: str
    dtype: str  # numpy dtype of the stored bytes; bf16 is read as uint16 and widened
    floating: bool
    itemsize: int


# typed storage class -> (numpy dtype, is floating point)
STORAGE_DTYPES = {"FloatStorage": ("<f4", True), "DoubleStorage": ("<f8", True), "HalfStorage": ("<f2", True),
                  "BFloat16Storage": ("<u2", True), "LongStorage": ("<i8", False), "IntStorage": ("<i4", False),
                  "ShortStorage": ("<i2", False), "CharStorage": ("i1", False), "ByteStorage": ("u1", False),
                  "BoolStorage": ("?", False)}
_STORAGE_TYPES = {kind: _StorageType(kind, dtype, floating, np.dtype(dtype).itemsize)
                  for kind, (dtype, floating) in STORAGE_DTYPES.items()}
_LOCAL_HEADER_BYTES = 30  # zip local file header before the name and extra field
_EXTRA_GUESS_BYTES = 128  # torch pads the extra field to align data to 64 bytes
_CENTRAL_HEADER_BYTES = 46  # zip central directory entry before its name, extra field and comment
_EOCD_BYTES, _ZIP64_LOCATOR_BYTES, _ZIP64_EOCD_BYTES = 22, 20, 56
_MAX_COMMENT_BYTES = 65535
_WINDOW_BYTES = 16 * 2**20  # one pread of wanted storages spans at most this much ...
_GAP_BYTES = 256 * 2**10  # ... and skips no gap larger than this between two of them
_UTF8_FLAG, _ENCRYPTED_FLAGS = 0x800, 0x41  # general purpose bits: utf-8 names; (strong) encryption
_STRINGS_AT_ONCE = 2 ** 16  # strings gathered together by _strings


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic collector off while millions of small acyclic containers are built
    (it rescans all of them, again and again: ~60% of a 10^6-key load); back on after."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class _NotPlain(Exception):
    """The pickle needs more than a plain state_dict: let torch.load decide."""


class _TensorArgs(BaseException):
    """What ``_rebuild_tensor_v2`` was called with, in ``.args`` (storage's persistent id,
    offset, shape, stride, ...). An exception class because the C unpickler then builds it
    without running any Python code: 10^6 tensors cost no Python call each. Never raised."""


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _TensorArgs,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            **{("torch", kind): storage for kind, storage in _STORAGE_TYPES.items()}}


class _StateDictUnpickler(pickle.Unpickler):
    # A persistent id stays the plain tuple torch wrote, ("storage", type, key, location,
    # numel); StorageReader.table checks them all at once.
    persistent_load = tuple

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise _NotPlain(f"{module}.{name}") from None


@dataclass(frozen=True)
class ZipDirectory:
    """A zip archive's central directory as arrays in member order (member i is ``names[i]``)."""

    names: list[str]
    header_offsets: np.ndarray  # int64: where each member's local header starts
    file_sizes: np.ndarray  # int64: uncompressed bytes
    compress_sizes: np.ndarray  # int64
    name_bytes: np.ndarray  # int64: the encoded name's length (the local header repeats it)
    stored: np.ndarray  # bool: not compressed
    crcs: np.ndarray  # uint32

    def find(self, members: list[str]) -> np.ndarray:
        """Where each of ``members`` is (int64; the last of duplicate names, as zipfile; -1
        where absent): one C-level scan of all names for the wanted ones (no dict of every
        name: 10^6 fresh strings to hash)."""
        unique = list(dict.fromkeys(members))
        slot = dict(zip(unique, range(len(unique))))
        hits = np.fromiter(map(slot.get, self.names, itertools.repeat(-1)), np.int64, len(self.names))
        found = np.full(len(slot), -1, np.int64)
        at = np.flatnonzero(hits >= 0)
        np.maximum.at(found, hits[at], at)
        return found[np.fromiter(map(slot.__getitem__, members), np.int64, len(members))]

    @classmethod
    def from_zipfile(cls, archive: zipfile.ZipFile) -> "ZipDirectory":
        """The same arrays from a :class:`zipfile.ZipFile` (archives numpy does not read)."""
        infos = archive.infolist()
        return cls([info.filename for info in infos], np.array([i.header_offset for i in infos], np.int64),
                   np.array([i.file_size for i in infos], np.int64),
                   np.array([i.compress_size for i in infos], np.int64),
                   np.array([len(i.orig_filename.encode("utf-8" if i.flag_bits & _UTF8_FLAG else "cp437"))
                             for i in infos], np.int64),
                   np.array([i.compress_type == zipfile.ZIP_STORED for i in infos], bool),
                   np.array([i.CRC for i in infos], np.uint32))


def read_zip_directory(fd: int, size: int) -> ZipDirectory | None:
    """A zip file's central directory read with numpy, or None where anything is unusual
    (zipfile then reads it): data before the archive, more than one disk,
    encryption, compressed members, per-member zip64 fields, a directory that does not tile
    exactly into its declared entries, names mixing encodings or holding newlines or NULs.

    Torch's files take this path: stored members with data descriptors (flag bit 3; sizes
    and CRCs are taken from the directory, as zipfile does) and a zip64 end record (10^6
    members overflow the 16-bit count).
    """
    tail_bytes = min(size, _EOCD_BYTES + _MAX_COMMENT_BYTES)
    tail = os.pread(fd, tail_bytes, size - tail_bytes)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD_BYTES > len(tail):
        return None
    disk, cd_disk, disk_entries, entries, cd_size, cd_offset, comment = struct.unpack_from("<4x4H2LH", tail, at)
    end_record = size - tail_bytes + at
    if at + _EOCD_BYTES + comment != len(tail) or disk or cd_disk or disk_entries != entries:
        return None
    locator = os.pread(fd, _ZIP64_LOCATOR_BYTES, end_record - _ZIP64_LOCATOR_BYTES) \
        if end_record >= _ZIP64_LOCATOR_BYTES else b""
    if locator[:4] == b"PK\x06\x07":
        _, zip64_disk, end_record, disks = struct.unpack("<4sLQL", locator)
        record = os.pread(fd, _ZIP64_EOCD_BYTES, end_record) if 0 <= end_record <= size - _ZIP64_EOCD_BYTES else b""
        if zip64_disk or disks > 1 or record[:4] != b"PK\x06\x06":
            return None
        disk, cd_disk, disk_entries, entries, cd_size, cd_offset = struct.unpack_from("<16x2L4Q", record)
        if disk or cd_disk or disk_entries != entries:
            return None
    if cd_offset + cd_size != end_record or entries == 0 or entries * _CENTRAL_HEADER_BYTES > cd_size:
        return None
    directory = os.pread(fd, cd_size, cd_offset)
    if len(directory) != cd_size:
        return None
    raw = np.frombuffer(directory, np.uint8)
    words = _words(raw, "<u4")
    starts = np.flatnonzero(words == 0x02014B50)
    if starts.size != entries or starts[0] != 0 or starts[-1] + _CENTRAL_HEADER_BYTES > cd_size:
        return None

    def field(offset: int, width: int) -> np.ndarray:  # every field ends inside its 46-byte header
        return (words[starts + offset] & (2 ** (8 * width) - 1)).astype(np.int64)

    flags, method, name_bytes = field(8, 2), field(10, 2), field(28, 2)
    ends = starts + _CENTRAL_HEADER_BYTES + name_bytes + field(30, 2) + field(32, 2)
    if not (np.array_equal(ends[:-1], starts[1:]) and ends[-1] == cd_size):
        return None  # a signature inside a name or extra field, or bytes between entries
    crcs, compress_sizes, file_sizes = field(16, 4), field(20, 4), field(24, 4)
    header_offsets, first_disk = field(42, 4), field(34, 2)
    utf8 = (flags & _UTF8_FLAG) != 0
    if ((flags & _ENCRYPTED_FLAGS).any() or method.any() or first_disk.any() or utf8.any() != utf8.all()
            or (np.maximum(compress_sizes, file_sizes).max() == 0xFFFFFFFF) or header_offsets.max() == 0xFFFFFFFF):
        return None
    names = _strings(raw, starts + _CENTRAL_HEADER_BYTES, name_bytes, "utf-8" if utf8.all() else "cp437",
                     forbidden=b"\x00")
    if names is None:
        return None
    return ZipDirectory(names, header_offsets, file_sizes, compress_sizes, name_bytes, np.ones(len(names), bool),
                        crcs.astype(np.uint32))


def _strings(raw: np.ndarray, starts: np.ndarray, lengths: np.ndarray, encoding: str, errors: str = "strict",
             forbidden: bytes = b"") -> list[str] | None:
    """The strings of ``lengths[i]`` bytes at ``starts[i]`` of ``raw``, gathered with numpy
    indices (``_STRINGS_AT_ONCE`` strings at a time: small index arrays, not one of every
    byte) and decoded once (a newline after each: the byte after a string, perhaps one past
    the end, is overwritten in the gathered copy); None where one holds a newline or a byte
    of ``forbidden``, or does not decode."""
    parts = []
    for first in range(0, starts.size, _STRINGS_AT_ONCE):
        at, length = starts[first:first + _STRINGS_AT_ONCE], lengths[first:first + _STRINGS_AT_ONCE]
        index = index_ranges(at, length + 1)
        after = np.cumsum(length + 1) - 1
        index[after] = np.minimum(index[after], raw.size - 1)
        gathered = raw[index]
        gathered[after] = ord("\n")
        parts.append(gathered.tobytes())
    text = b"".join(parts)
    if text.count(b"\n") != starts.size or any(byte in text for byte in forbidden):
        return None
    try:
        return text.decode(encoding, errors).split("\n")[:-1]
    except UnicodeDecodeError:
        return None


def _words(buf: np.ndarray, dtype: str) -> np.ndarray:
    """``buf``'s 4-byte words at every byte offset (unaligned, overlapping: a view, no copy)."""
    return np.ndarray((buf.size - 3,), dtype, buf, 0, (1,))


@dataclass(frozen=True)
class TensorTable:
    """The floating point tensors of a state_dict as the pickle declares them (nothing read),
    as columns in file order: keys, shapes and strides (``ndim`` axes of the rows of ``dims``
    and ``steps``, padded with 1 and 0), storage kinds, storage keys, offsets and the storage
    sizes the persistent ids declare; every record checked well-formed."""

    keys: list[str]
    ndim: np.ndarray  # int64 (n,)
    dims: np.ndarray  # int64 (n, axes), 1 past ndim
    stride_ndim: np.ndarray  # int64 (n,)
    steps: np.ndarray  # int64 (n, axes), 0 past stride_ndim
    kinds: list[_StorageType]
    storages: list[str]
    offsets: np.ndarray  # int64 (n,)
    storage_numels: np.ndarray  # int64 (n,)

    @classmethod
    def empty(cls) -> "TensorTable":
        none = np.zeros(0, np.int64)
        return cls([], none, np.ones((0, 1), np.int64), none, np.zeros((0, 1), np.int64), [], [], none, none)

    @classmethod
    def concatenate(cls, parts: Sequence["TensorTable"]) -> "TensorTable":
        if len(parts) == 1:
            return parts[0]
        axes = max(p.dims.shape[1] for p in parts)

        def padded(array: np.ndarray, fill: int) -> np.ndarray:
            extra = axes - array.shape[1]
            return np.pad(array, ((0, 0), (0, extra)), constant_values=fill) if extra else array

        return cls(list(itertools.chain.from_iterable(p.keys for p in parts)),
                   np.concatenate([p.ndim for p in parts]), np.concatenate([padded(p.dims, 1) for p in parts]),
                   np.concatenate([p.stride_ndim for p in parts]),
                   np.concatenate([padded(p.steps, 0) for p in parts]),
                   list(itertools.chain.from_iterable(p.kinds for p in parts)),
                   list(itertools.chain.from_iterable(p.storages for p in parts)),
                   np.concatenate([p.offsets for p in parts]), np.concatenate([p.storage_numels for p in parts]))


def shape_tuples(ndim: np.ndarray, dims: np.ndarray) -> list[tuple[int, ...]]:
    """Shape tuples from their lengths and the rows of ``dims``; shapes of one length are
    made together (``zip`` over columns: no Python call per shape)."""
    ndim = np.asarray(ndim, np.int64)
    shapes: list[Any] = [()] * ndim.size
    for length in np.flatnonzero(np.bincount(ndim)).tolist() if ndim.size else []:
        if length == 0:
            continue
        where = np.flatnonzero(ndim == length)
        made = list(zip(*(dims[where, axis].tolist() for axis in range(length))))
        if where.size == ndim.size:
            return made
        for i, shape in zip(where.tolist(), made):
            shapes[i] = shape
    return shapes


def read_torch_zip(path: Path, name: str, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, "StorageReader"] | None:
    """The unpickled object of a plain state_dict file, with tensor records (see
    :meth:`StorageReader.table`) in place of tensors, and a reader for their values;
    ``None`` if the file is not a zip or its pickle needs anything beyond a plain state_dict.

    Raises
    ------
    UnsupportedFileError, UnsafeFileError
        A zip bomb, a member outside the archive, or a corrupt pickle stream.
    """
    if not zipfile.is_zipfile(path):
        return None
    reader = StorageReader(path, name, limits)
    try:
        text = "\n".join(reader.directory.names) + "\n"
        if text.count("data.pkl\n") != 1:
            return None
        end = text.index("data.pkl\n") + len("data.pkl")
        member = text[text.rfind("\n", 0, end) + 1:end]
        reader.prefix = member[:-len("data.pkl")]
        data = reader.member(member, limits.max_json_bytes)
        del text
        try:
            with paused_gc():
                try:
                    spliced = _spliced_load(data, name, limits)
                except MemoryError:
                    raise
                except Exception:  # noqa: BLE001 - a scanner bug must not change what a file reads as
                    spliced = None
                if spliced is not None:
                    obj, reader.spliced, reader.runs = spliced
                else:
                    obj = _StateDictUnpickler(io.BytesIO(data)).load()
        except _NotPlain:
            reader.close()
            return None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
            raise UnsupportedFileError(f"{name}: not a readable PyTorch file (corrupt pickle: "
                                       f"{type(err).__name__})") from err
        return obj, reader
    except BaseException:
        reader.close()
        raise


# -- the record scanner: torch.save's per-tensor pickle pattern, read with numpy ----------------
#
# torch.save writes each tensor of a state_dict as the same opcodes (after the first, which
# defines the globals and strings the rest fetch from the memo):
#     key:    BINUNICODE key, PUT
#     value:  GET _rebuild_tensor_v2, MARK, MARK, GET 'storage', GET <kind>Storage,
#             BINUNICODE storage key, PUT, GET location, INT numel, TUPLE, PUT, BINPERSID,
#             INT offset, <shape tuple>, <stride tuple>, NEWFALSE|NEWTRUE,
#             GET OrderedDict, EMPTY_TUPLE, REDUCE, PUT, TUPLE, PUT, REDUCE, PUT
# with SETITEMS, MARK between batches of 1000. scan_records finds runs of such records and
# parses them all together; the C unpickler (the same restricted one) reads the rest, the
# runs replaced by one placeholder each; see _spliced_load for why the two readings agree.

_OP = {name: code for name, code in dict(
    MARK=b"(", TUPLE=b"t", TUPLE1=b"\x85", TUPLE2=b"\x86", TUPLE3=b"\x87", EMPTY_TUPLE=b")",
    BINPUT=b"q", LONG_BINPUT=b"r", BINGET=b"h", LONG_BINGET=b"j", BINUNICODE=b"X", BININT1=b"K",
    BININT2=b"M", BININT=b"J", BINPERSID=b"Q", NEWTRUE=b"\x88", NEWFALSE=b"\x89", REDUCE=b"R",
    SETITEMS=b"u", STOP=b".").items() for code in [code[0]]}
_MAX_SCANNED_AXES = 8


def _argument_widths(**widths: int) -> np.ndarray:
    """Per opcode byte, the width of its argument for the opcodes named (0: another opcode)."""
    table = np.zeros(256, np.int64)
    for op, width in widths.items():
        table[_OP[op]] = width
    return table


_GETS, _PUTS = _argument_widths(BINGET=1, LONG_BINGET=4), _argument_widths(BINPUT=1, LONG_BINPUT=4)
_INTS = _argument_widths(BININT1=1, BININT2=2, BININT=4)
# By argument width, the bits of the 4-byte word at the argument that are its value: memo
# indices are unsigned, BININT1/2 unsigned, BININT a signed 32-bit int (the word sign-extended).
_UNSIGNED_MASKS = np.array([0, 0xFF, 0xFFFF, 0, 0xFFFFFFFF], np.int64)
_SIGNED_MASKS = np.array([0, 0xFF, 0xFFFF, 0, -1], np.int64)
_PAD = 1024  # bytes the scanner may read past the end between two clips (< 80 opcodes of 5 + 5)
_MIN_RUN = 64  # records: shorter runs are left to the unpickler
_MAX_WALKED_OPS = 200_000  # opcodes outside the runs checked one by one; more: no scan


STATE_DICT_WRAPPERS = ("state_dict", "model", "model_state_dict")  # keys a checkpoint nests it under


class _RunMarker:
    """The key a run's placeholder puts into the dict (value None); one object per run."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class _Cursor:
    """One parse position per candidate record, advanced opcode by opcode with numpy;
    ``ok`` drops the candidates whose bytes do not follow the pattern. ``padded`` is the
    pickle and ``_PAD`` zero bytes (no opcode of the pattern), so reads just past the end
    need no bounds check; positions are clipped to the end after every string."""

    def __init__(self, padded: np.ndarray, size: int, pos: np.ndarray) -> None:
        self.buf, self.n, self.pos = padded, size, pos.astype(np.int64)
        # Little-endian 4-byte words at every byte offset (unaligned, overlapping views).
        self.u32, self.i32 = _words(padded, "<u4"), _words(padded, "<i4")
        self.ok = np.ones(pos.size, bool)

    def byte(self, k: int = 0) -> np.ndarray:
        return self.buf[self.pos + k] if k else self.buf[self.pos]

    def uint(self, k: int) -> np.ndarray:
        return self.u32[self.pos + k].astype(np.int64)

    def expect(self, op: str) -> None:
        self.ok &= self.byte() == _OP[op]
        self.pos += 1

    def memo(self, widths: np.ndarray, required: np.ndarray | None = None) -> np.ndarray:
        """A BINGET/LONG_BINGET (``_GETS``) or BINPUT/LONG_BINPUT (``_PUTS``) and its memo
        index; -1 where absent and not ``required``."""
        width = widths[self.byte()]
        present = width > 0
        self.ok &= present if required is None else (present | ~required)
        index = self.u32[self.pos + 1] & _UNSIGNED_MASKS[width]
        self.pos += width + present
        return np.where(present, index, -1)

    def integer_at(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(is an int opcode, its value, its opcode and argument's width) at each position;
        nothing advanced."""
        width = _INTS[self.byte()]
        value = self.i32[self.pos + 1].astype(np.int64) & _SIGNED_MASKS[width]
        return width > 0, value, width + 1

    def integer(self) -> np.ndarray:
        is_int, value, width = self.integer_at()
        self.ok &= is_int
        self.pos += width
        return value

    def unicode(self) -> tuple[np.ndarray, np.ndarray]:
        """A BINUNICODE: where its bytes start and how many."""
        self.expect("BINUNICODE")
        length = self.uint(0)
        start = self.pos + 4
        self.pos = start + length
        self.ok &= self.pos <= self.n
        np.minimum(self.pos, self.n, out=self.pos)
        return start, length

    def int_tuple(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """A tuple of ints as the pickler writes one (EMPTY_TUPLE; 1 to 3 ints and TUPLE1-3;
        MARK, ints, TUPLE), memoized unless empty: (length, a column of dims per axis any
        has, padded with 1)."""
        marked = self.byte() == _OP["MARK"]
        self.pos += marked
        columns, count = [], np.zeros(self.pos.size, np.int64)
        for axis in range(_MAX_SCANNED_AXES + 1):
            is_int, value, width = self.integer_at()
            going = is_int & (count == axis)
            if not going.any():
                break
            if axis == _MAX_SCANNED_AXES:
                self.ok &= ~going
                break
            columns.append(np.where(going, value, 1))
            self.pos += np.where(going, width, 0)
            count += going
        op = self.byte()
        closing = np.where(marked, _OP["TUPLE"], np.where(count == 0, _OP["EMPTY_TUPLE"], _OP["TUPLE1"] - 1 + count))
        self.ok &= (op == closing) & (marked | (count <= 3))
        self.pos += 1
        self.memo(_PUTS, required=marked | (count > 0))
        return count, columns


@dataclass
class _Run:
    """Records read by the scanner: the bytes ``[start, end)`` of the pickle hold their keys
    and values (first key to last value), columns in file order."""

    start: int
    end: int
    key_start: np.ndarray
    key_length: np.ndarray
    storage_start: np.ndarray
    storage_length: np.ndarray
    gets: np.ndarray  # (records, 5): memo indices of rebuild, 'storage', kind, location, OrderedDict
    puts: np.ndarray  # every memo index the run's PUTs write
    numel: np.ndarray
    offset: np.ndarray
    ndim: np.ndarray
    dims: np.ndarray
    stride_ndim: np.ndarray
    steps: np.ndarray


def scan_records(data: bytes) -> list[_Run]:
    """Runs of at least ``_MIN_RUN`` consecutive tensor records of torch.save's pattern, each
    from the key after a pattern value to the end of the last pattern value of the chain.
    Only the bytes are read; what the memo fetches is checked once the unpickler has read the
    rest (:func:`_spliced_load`)."""
    buf = np.frombuffer(data, np.uint8)
    if buf.size < 64:
        return []
    pairs = _pair_positions(data, _OP["MARK"])
    starts = np.sort(np.concatenate([pairs[(pairs >= 2) & (buf[np.maximum(pairs - 2, 0)] == _OP["BINGET"])] - 2,
                                     pairs[(pairs >= 5) & (buf[np.maximum(pairs - 5, 0)] == _OP["LONG_BINGET"])] - 5]))
    del pairs
    if starts.size < _MIN_RUN:
        return []
    starts = starts[np.concatenate(([True], starts[1:] != starts[:-1]))]
    padded = np.zeros(buf.size + _PAD, np.uint8)
    padded[:buf.size] = buf
    c = _Cursor(padded, buf.size, starts)
    rebuild = c.memo(_GETS)
    c.expect("MARK")
    c.expect("MARK")
    storage = c.memo(_GETS)
    kind = c.memo(_GETS)
    storage_start, storage_length = c.unicode()
    puts = [c.memo(_PUTS)]
    location = c.memo(_GETS)
    numel = c.integer()
    c.expect("TUPLE")
    puts.append(c.memo(_PUTS))
    c.expect("BINPERSID")
    offset = c.integer()
    ndim, dims = c.int_tuple()
    stride_ndim, steps = c.int_tuple()
    width = max(1, len(dims), len(steps))  # the axes any record has
    dims, steps = (np.stack(c + [np.ones(ndim.size, np.int64)] * (width - len(c)), axis=1) for c in (dims, steps))
    flag = c.byte()
    c.ok &= (flag == _OP["NEWFALSE"]) | (flag == _OP["NEWTRUE"])
    c.pos += 1
    hooks = c.memo(_GETS)
    c.expect("EMPTY_TUPLE")
    c.expect("REDUCE")
    puts.append(c.memo(_PUTS))
    c.expect("TUPLE")
    puts.append(c.memo(_PUTS))
    c.expect("REDUCE")
    puts.append(c.memo(_PUTS))
    c.ok &= c.pos <= c.n
    value_ok, value_end = c.ok.copy(), c.pos.copy()
    # What follows a value: (SETITEMS, MARK,) the next key; it links to the next value.
    batch = (c.byte() == _OP["SETITEMS"]) & (c.byte(1) == _OP["MARK"])
    c.pos += 2 * batch
    key_start, key_length = c.unicode()
    key_put = c.memo(_PUTS)
    c.ok &= c.pos <= c.n
    following = np.searchsorted(starts, c.pos)
    following_ok = following < starts.size
    following = np.minimum(following, starts.size - 1)
    linked = c.ok & value_ok & following_ok & (starts[following] == c.pos) & value_ok[following]
    runs, taken_end = [], -1
    for head, chain in _chains(linked, following):
        if starts[head] < taken_end or chain.size <= _MIN_RUN:
            continue  # inside a taken run, or too short to be worth a splice
        keys, values = chain[:-1], chain[1:]
        run_start, run_end = int(value_end[head]), int(value_end[chain[-1]])
        if run_start < taken_end:
            return []  # chains that overlap: not torch.save's
        taken_end = run_end
        runs.append(_Run(run_start, run_end, key_start[keys], key_length[keys], storage_start[values],
                         storage_length[values],
                         np.stack([rebuild[values], storage[values], kind[values], location[values],
                                   hooks[values]], axis=1),
                         np.concatenate([key_put[keys]] + [p[values] for p in puts]), numel[values], offset[values],
                         ndim[values], dims[values], stride_ndim[values], steps[values]))
    return runs


def _chains(linked: np.ndarray, following: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Maximal chains of candidates, each ``linked`` one to the one at ``following``, by head in
    order: (head, the chain's candidates from the head on, ascending). Where two link to one
    (a false start: a GET's opcode byte inside the memo index just before a real value parses
    like it and links to the same next value), the later, nearer one keeps the link, so the
    chains are disjoint paths; every candidate's head is found by pointer jumping (log2 of the
    longest chain rounds of one numpy gather), not by walking."""
    source = np.flatnonzero(linked)
    target = following[source]
    previous = np.full(linked.size, -1, np.int64)
    np.maximum.at(previous, target, source)
    head_of = np.where(previous >= 0, previous, np.arange(linked.size))
    while True:  # previous[i] < i: no cycle, so this ends
        jumped = head_of[head_of]
        if np.array_equal(jumped, head_of):
            break
        head_of = jumped
    is_head = np.zeros(linked.size, bool)
    is_head[source[previous[target] == source]] = True
    heads = np.flatnonzero(is_head & (previous < 0))
    order = np.argsort(head_of, kind="stable")
    labels = head_of[order]
    for head, low, high in zip(heads.tolist(), np.searchsorted(labels, heads, "left").tolist(),
                               np.searchsorted(labels, heads, "right").tolist()):
        yield head, order[low:high]


def _ops_reach(data: bytes, start: int, end: int, budget: list[int]) -> bool:
    """Whether the opcodes from ``start`` (an opcode boundary) end exactly at ``end`` with no
    STOP among them; ``budget[0]`` opcodes at most, over all calls."""
    stream = io.BytesIO(memoryview(data)[start:end])
    size = end - start
    try:
        while stream.tell() < size:
            op = pickletools.code2op.get(stream.read(1).decode("latin-1"))
            budget[0] -= 1
            if op is None or op.name in ("STOP", "FRAME") or budget[0] < 0:
                return False
            if op.arg is not None:
                op.arg.reader(stream)
    except (ValueError, UnicodeDecodeError, struct.error):
        return False
    return stream.tell() == size


class _SplicingUnpickler(_StateDictUnpickler):
    """The restricted unpickler, over a pickle whose scanned runs are placeholders: each is a
    global of a module named with a fresh random nonce (nothing in a file can name it), which
    becomes a :class:`_RunMarker` key; the memo at that point is kept (what the run's fetches
    meant)."""

    def __init__(self, file: Any, nonce: str, count: int) -> None:
        super().__init__(file)
        self.nonce = nonce
        self.markers = [_RunMarker(i) for i in range(count)]
        self.memos: list[dict[int, Any]] = []

    def find_class(self, module: str, name: str) -> Any:
        if module == self.nonce:
            if name != str(len(self.memos)) or len(self.memos) >= len(self.markers):
                raise _NotPlain("placeholder out of order")
            self.memos.append(self.memo.copy())
            return self.markers[len(self.memos) - 1]
        return super().find_class(module, name)


def _memo_codes(memo: dict[int, Any], indices: np.ndarray) -> np.ndarray:
    """Per memo index in ``indices``: 1 _rebuild_tensor_v2, 2 'storage', 3 another str,
    4 OrderedDict, 10 + i the i-th storage kind, 0 anything else or nothing."""
    kinds = list(_STORAGE_TYPES.values())
    known = np.array(sorted(memo), np.int64)
    codes = np.array([1 if memo[i] is _TensorArgs else 4 if memo[i] is collections.OrderedDict else
                      (2 if memo[i] == "storage" else 3) if type(memo[i]) is str else
                      10 + kinds.index(memo[i]) if type(memo[i]) is _StorageType and memo[i] in kinds else 0
                      for i in known.tolist()] + [0], np.int64)
    at = np.searchsorted(known, indices)
    found = (at < known.size) & (known[np.minimum(at, max(known.size - 1, 0))] == indices) if known.size else \
        np.zeros(indices.shape, bool)
    return np.where(found, codes[np.where(found, at, known.size)], 0)


def _pair_positions(data: bytes, code: int) -> np.ndarray:
    """Sorted positions ``i`` with ``data[i] == data[i + 1] == code``, read as 2-byte words at
    even and at odd offsets."""
    pair = code | code << 8
    even = np.flatnonzero(np.frombuffer(data, "<u2", len(data) // 2) == pair) * 2
    odd = np.flatnonzero(np.frombuffer(data, "<u2", (len(data) - 1) // 2, 1) == pair) * 2 + 1
    both = np.concatenate([even, odd])
    both.sort(kind="stable")
    return both


def _spliced_load(data: bytes, name: str, limits: Limits) -> tuple[Any, Any, dict[_RunMarker, TensorTable]] | None:
    """The unpickled object with the scanned runs in place, or None (read it all with the
    unpickler) where there are no runs or anything does not check out.

    The two readings agree because: the bytes before, between and after the runs are walked
    opcode by opcode from the start, so every run begins and ends on an opcode boundary of
    the real reading; a run's opcodes only push key, value pairs onto the batch being set
    into one dict (the placeholder puts one pair there instead; the markers must all be keys
    of the state dict); what a run fetches from the memo is checked against the memo as the
    unpickler had it at that point (_rebuild_tensor_v2, 'storage', a storage type, a string,
    OrderedDict); no memo index a run writes is one the rest of the pickle wrote (so nothing
    outside a run could read a run's object or the other way round: a fetch of a run's object
    fails, and then the whole file goes to the unpickler); and no key occurs twice.
    """
    runs = scan_records(data)
    if not runs:
        return None
    budget, at = [_MAX_WALKED_OPS], 0
    nonce = f"morphscope-splice-{secrets.token_hex(16)}"
    if nonce.encode() in data:
        return None
    pieces = []
    for i, run in enumerate(runs):
        if not _ops_reach(data, at, run.start, budget):
            return None
        pieces += [data[at:run.start], f"c{nonce}\n{i}\nN".encode()]
        at = run.end
    pieces.append(data[at:])
    unpickler = _SplicingUnpickler(io.BytesIO(b"".join(pieces)), nonce, len(runs))
    del pieces
    try:
        obj = unpickler.load()
    except Exception:  # noqa: BLE001 - anything odd: the unpickler reads the original instead
        return None
    if len(unpickler.memos) != len(runs):
        return None
    final_memo = np.fromiter(unpickler.memo.copy().keys(), np.int64)
    state = obj
    for wrapper in STATE_DICT_WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or sum(type(k) is _RunMarker for k in state) != len(runs) \
            or not all(m in state for m in unpickler.markers):
        return None
    buf = np.frombuffer(data, np.uint8)
    kinds = list(_STORAGE_TYPES.values())
    tables, all_keys = {}, [k for k in state if type(k) is not _RunMarker]
    for run, memo, marker in zip(runs, unpickler.memos, unpickler.markers):
        got = _memo_codes(memo, run.gets)
        if not ((got[:, 0] == 1).all() and (got[:, 1] == 2).all() and (got[:, 2] >= 10).all()
                and ((got[:, 3] == 2) | (got[:, 3] == 3)).all() and (got[:, 4] == 4).all()):
            return None
        low, high = run.puts.min(), run.puts.max()
        inside = final_memo[(final_memo >= low) & (final_memo <= high)]
        if run.puts.min() < 0 or (inside.size and np.isin(run.puts, inside).any()):
            return None
        keys = _strings(buf, run.key_start, run.key_length, "utf-8", "surrogatepass")  # as the unpickler decodes
        storages = _strings(buf, run.storage_start, run.storage_length, "utf-8", "surrogatepass")
        if keys is None or storages is None:
            return None
        all_keys += keys
        tables[marker] = TensorTable(keys, run.ndim, run.dims, run.stride_ndim, run.steps,
                                     [kinds[i] for i in (got[:, 2] - 10).tolist()], storages,
                                     run.offset, run.numel)
    if len(set(all_keys)) != len(all_keys):
        return None
    return obj, state, tables


class StorageReader:
    """Reads tensor values straight from the zip's stored (uncompressed) members."""

    def __init__(self, path: Path, name: str, limits: Limits) -> None:
        self.name, self.limits, self.prefix, self.archive = name, limits, "", None
        self.spliced: Any = None  # the dict the scanned runs went into, and their columns by marker
        self.runs: dict[_RunMarker, TensorTable] = {}
        self.fd = os.open(path, os.O_RDONLY)
        try:
            directory = read_zip_directory(self.fd, os.fstat(self.fd).st_size)
            if directory is None:  # zipfile reads what numpy does not
                self.archive = open_zip(path, name, limits)
                directory = ZipDirectory.from_zipfile(self.archive)
            else:
                check_members(name, directory.names, directory.file_sizes, directory.compress_sizes, limits)
        except BaseException:
            self.close()
            raise
        self.directory = directory

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.archive is not None:
            self.archive.close()

    def member(self, member: str, max_bytes: int) -> bytes:
        """One whole member's bytes, CRC checked, refused above ``max_bytes``."""
        i = int(self.directory.find([member])[0])
        if i < 0:
            raise UnsupportedFileError(f"{self.name}: zip archive without {member}")
        size = int(self.directory.file_sizes[i])
        if size > max_bytes:
            raise UnsupportedFileError(f"{self.name}: {member} is {human_bytes(size)} "
                                       f"uncompressed; limit {human_bytes(max_bytes)}")
        if not self.directory.stored[i]:
            return read_member(self.archive, member, self.name, max_bytes)
        data = self._stored(i, member, 0, size)
        if zlib.crc32(data) != int(self.directory.crcs[i]):
            raise UnsupportedFileError(f"{self.name}: corrupt zip member {member} (bad CRC)")
        return data

    def table(self, state: Mapping[Any, Any]) -> TensorTable | None:
        """The floating point tensors among ``state``'s values (other values and non-string
        keys are skipped), or None where a tensor record is not the plain form (torch.load
        then decides). Records the unpickler built are checked together (C-level ``map``
        over them); runs of records the scanner read (:func:`scan_records`) come as columns
        already checked, in their place in the dict."""
        parts, pending = [], []
        runs = self.runs if state is self.spliced else {}
        for key, value in state.items():
            run = runs.get(key) if type(key) is _RunMarker else None
            if run is None:
                pending.append((key, value))
                continue
            parts.append(_table_from_args(self.name, self.limits, pending))
            parts.append(run)
            pending = []
        parts.append(_table_from_args(self.name, self.limits, pending))
        if any(part is None for part in parts):
            return None
        table = TensorTable.concatenate([p for p in parts if p.keys] or [TensorTable.empty()])
        if not table.keys:
            return table
        if table.offsets.min() < 0 or table.dims.min() < 0:
            return None
        floating = np.fromiter(map(attrgetter("floating"), table.kinds), bool, len(table.kinds))
        if floating.all():
            return table
        keep = np.flatnonzero(floating)
        take = keep.tolist()
        return TensorTable([table.keys[i] for i in take], table.ndim[keep], table.dims[keep],
                           table.stride_ndim[keep], table.steps[keep], [table.kinds[i] for i in take],
                           [table.storages[i] for i in take], table.offsets[keep], table.storage_numels[keep])

    def values(self, table: TensorTable, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """The values of the tensors at ``positions`` of ``table``, as float32, one after
        another in one flat array, and where each starts in it (one more: the end); None if
        one of them is not contiguous (a strided view: torch.load rebuilds it).

        Raises
        ------
        UnsupportedFileError
            A storage the archive lacks, shorter than its tensors, or over ``max_tensor_bytes``.
        """
        if not len(positions):
            return np.zeros(0, np.float32), np.zeros(1, np.int64)
        at = np.asarray(positions, np.int64)
        ndim, dims, steps = table.ndim[at], table.dims[at], table.steps[at]
        kinds = [table.kinds[i] for i in at.tolist()]
        itemsize = np.fromiter(map(attrgetter("itemsize"), kinds), np.int64, len(kinds))
        # Sizes in float64 first: an int64 product of declared dims could wrap past the limit.
        approx = np.prod(dims.astype(np.float64), axis=1)
        big = approx >= 2.0 ** 62
        numel = np.prod(np.where(big[:, None], 0, dims), axis=1)  # exact where not big (dims >= 0)
        reversed_steps = np.cumprod(np.concatenate([np.ones((dims.shape[0], 1), np.int64),
                                                    np.where(big[:, None], 1, dims)[:, :0:-1]], axis=1), axis=1)
        axes = np.arange(dims.shape[1])
        strided = (approx > 1) & ((table.stride_ndim[at] != ndim)
                                  | ((steps != reversed_steps[:, ::-1]) & (axes < ndim[:, None])).any(axis=1))
        for i in np.flatnonzero(big).tolist():  # exact, in Python integers
            shape, stride = tuple(dims[i, :ndim[i]].tolist()), tuple(steps[i, :table.stride_ndim[at[i]]].tolist())
            strided[i] = stride != _contiguous_strides(shape)
        if strided.any():
            return None
        over = np.flatnonzero(big | (approx * itemsize > self.limits.max_tensor_bytes))
        for i in over.tolist():
            check_tensor_shape(self.name, table.keys[int(at[i])], tuple(dims[i, :ndim[i]].tolist()),
                               int(itemsize[i]), self.limits)
        members = [f"{self.prefix}data/{table.storages[i]}" for i in at.tolist()]
        member = self.directory.find(members)
        if member.min() < 0:
            raise UnsupportedFileError(f"{self.name}: the pickle names a storage "
                                       f"{members[int(np.argmin(member))]} the archive lacks")
        offset = table.offsets[at]
        past = (offset + numel > table.storage_numels[at]) | \
            ((offset + numel) * itemsize > self.directory.file_sizes[member])
        if past.any():
            bad = int(np.flatnonzero(past)[0])
            raise UnsupportedFileError(f"{self.name}: storage {members[bad]} is shorter than its tensors")
        starts = np.concatenate(([0], np.cumsum(numel)))
        flat = np.empty(int(starts[-1]), np.float32)
        if not self.directory.stored[member].all():  # zipfile inflates them (not torch's own files)
            for at_flat, m, kind, first, count in zip(starts.tolist(), members, kinds, offset.tolist(),
                                                      numel.tolist()):
                data = read_member(self.archive, m, self.name, self.limits.max_tensor_bytes)
                flat[at_flat:at_flat + count] = _widened(np.frombuffer(data, kind.dtype, count,
                                                                       first * kind.itemsize), kind)
            return flat, starts
        names = [k.name for k in kinds]
        for kind in set(names):
            group = np.flatnonzero(np.array(names) == kind) if len(set(names)) > 1 else np.arange(len(names))
            self._gather(flat, starts, _STORAGE_TYPES[kind], member[group], offset[group], numel[group], group)
        return flat, starts

    def _gather(self, flat: np.ndarray, starts: np.ndarray, kind: _StorageType, member: np.ndarray,
                offset: np.ndarray, numel: np.ndarray, group: np.ndarray) -> None:
        """Read one storage type's tensors into ``flat``, a few large preads at a time."""
        itemsize = kind.itemsize
        header = self.directory.header_offsets[member]
        order = np.argsort(header, kind="stable")
        header, member, offset, numel, group = header[order], member[order], offset[order], numel[order], group[order]
        reach = header + _LOCAL_HEADER_BYTES + self.directory.name_bytes[member] + _EXTRA_GUESS_BYTES \
            + (offset + numel) * itemsize
        first = 0
        for last in _windows(header, reach):
            window = np.frombuffer(os.pread(self.fd, int(reach[first:last].max() - header[first]),
                                            int(header[first])), np.uint8)
            where = header[first:last] - header[first]
            data = self._data_starts(window, where, member[first:last])
            begin = data + offset[first:last] * itemsize
            size = numel[first:last] * itemsize
            if (begin + size > window.size).any():  # a longer extra field than guessed: one by one
                window, begin = self._one_by_one(member[first:last], offset[first:last] * itemsize, size)
            raw = window[index_ranges(begin, size)].view(kind.dtype)
            flat[index_ranges(starts[group[first:last]], numel[first:last])] = _widened(raw, kind)
            first = last

    def _data_starts(self, window: np.ndarray, where: np.ndarray, member: np.ndarray) -> np.ndarray:
        """Where each member's data begins in ``window`` (its local headers at ``where``)."""
        if (where + _LOCAL_HEADER_BYTES > window.size).any():
            raise UnsupportedFileError(f"{self.name}: corrupt zip member "
                                       f"{self.directory.names[int(member[0])]} (truncated)")
        signature = (window[where].astype(np.int64) | window[where + 1].astype(np.int64) << 8
                     | window[where + 2].astype(np.int64) << 16 | window[where + 3].astype(np.int64) << 24)
        name_bytes = window[where + 26].astype(np.int64) | window[where + 27].astype(np.int64) << 8
        extra = window[where + 28].astype(np.int64) | window[where + 29].astype(np.int64) << 8
        bad = (signature != 0x04034B50) | (name_bytes != self.directory.name_bytes[member])
        if bad.any():
            raise UnsupportedFileError(f"{self.name}: corrupt zip member "
                                       f"{self.directory.names[int(member[np.flatnonzero(bad)[0]])]}")
        return where + _LOCAL_HEADER_BYTES + name_bytes + extra

    def _one_by_one(self, member: np.ndarray, skip: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tensors' bytes member by member, one after another, and where each begins."""
        parts = [self._stored(int(m), self.directory.names[int(m)], int(s), int(n))
                 for m, s, n in zip(member, skip, size)]
        return np.frombuffer(b"".join(parts), np.uint8), np.concatenate(([0], np.cumsum(size)[:-1]))

    def _stored(self, i: int, member: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` of stored member ``i``: one ``pread`` of its local
        header, name, extra field and data (a second one where the extra field is long)."""
        header = int(self.directory.header_offsets[i])
        guess = _LOCAL_HEADER_BYTES + int(self.directory.name_bytes[i]) + _EXTRA_GUESS_BYTES
        chunk = os.pread(self.fd, guess + start + length, header)
        if len(chunk) < _LOCAL_HEADER_BYTES or chunk[:4] != b"PK\x03\x04":
            raise UnsupportedFileError(f"{self.name}: corrupt zip member {member}")
        data_start = (_LOCAL_HEADER_BYTES + int.from_bytes(chunk[26:28], "little")
                      + int.from_bytes(chunk[28:30], "little") + start)
        raw = chunk[data_start:data_start + length] if data_start + length <= len(chunk) else \
            os.pread(self.fd, length, header + data_start)
        if len(raw) != length:
            raise UnsupportedFileError(f"{self.name}: storage {member} is truncated")
        return raw


_INT64_SAFE = 2 ** 62


def _table_from_args(name: str, limits: Limits, items: list[tuple[Any, Any]]) -> TensorTable | None:
    """The tensor records among ``items`` (key, value pairs the unpickler built) as a
    :class:`TensorTable` of every storage kind, or None where one is not the plain form."""
    pairs = [(k, v) for k, v in items if type(k) is str and type(v) is _TensorArgs]
    if not pairs:
        return TensorTable.empty()
    keys = list(map(itemgetter(0), pairs))
    args = list(map(attrgetter("args"), map(itemgetter(1), pairs)))
    del pairs
    if min(map(len, args)) < 4:
        return None
    ids, offsets, shapes, strides = (list(map(itemgetter(i), args)) for i in range(4))
    if not (_types(ids) <= {tuple} and set(map(len, ids)) == {5}):
        return None
    kinds = list(map(itemgetter(1), ids))
    numels = list(map(itemgetter(4), ids))
    if not (set(map(itemgetter(0), ids)) == {"storage"} and _types(kinds) <= {_StorageType}
            and _types(map(itemgetter(2), ids)) <= {str} and _types(numels) <= {int}
            and _types(offsets) <= {int} and _types(shapes) <= {tuple} and _types(strides) <= {tuple}):
        return None
    dims = list(itertools.chain.from_iterable(shapes))
    steps = list(itertools.chain.from_iterable(strides))
    if not (_types(dims) <= {int} and _types(steps) <= {int}):
        return None
    if max(map(abs, itertools.chain(dims, steps, offsets, numels)), default=0) >= _INT64_SAFE:
        for key, shape, kind in zip(keys, shapes, kinds):  # a declared size past int64: refused
            if any(abs(d) >= _INT64_SAFE for d in shape):
                check_tensor_shape(name, key, shape, kind.itemsize, limits)
        raise UnsupportedFileError(f"{name}: not a readable PyTorch file (a tensor's storage offset, "
                                   "size or stride is out of range)")
    ndim = np.fromiter(map(len, shapes), np.int64, len(shapes))
    stride_ndim = np.fromiter(map(len, strides), np.int64, len(strides))
    axes = max(1, int(ndim.max()), int(stride_ndim.max()))
    return TensorTable(keys, ndim, padded_rows(ndim, dims, 1, axes), stride_ndim,
                       padded_rows(stride_ndim, steps, 0, axes),
                       kinds, list(map(itemgetter(2), ids)), np.array(offsets, np.int64),
                       np.array(numels, np.int64))


def padded_rows(lengths: np.ndarray, values: list[int], fill: int, axes: int | None = None) -> np.ndarray:
    """Rows of ``axes`` columns (default: the longest, at least 1) from ragged values (row i:
    the next ``lengths[i]``), padded with ``fill``."""
    axes = max(1, int(lengths.max(initial=0))) if axes is None else axes
    out = np.full((lengths.size, axes), fill, np.int64)
    out[np.arange(axes) < lengths[:, None]] = np.array(values, np.int64)
    return out


def _widened(raw: np.ndarray, kind: _StorageType) -> np.ndarray:
    """Stored values as numbers float32 can take (bf16: the high half of a float32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32) if kind.name == "BFloat16Storage" else raw


def _types(values: Any) -> set[type]:
    return set(map(type, values))


def _windows(header: np.ndarray, reach: np.ndarray) -> list[int]:
    """Ends of runs of sorted members read with one pread each: a run ends before a member
    that begins over ``_GAP_BYTES`` past where all before it reach, and its members' headers
    span less than ``_WINDOW_BYTES`` (a read: that and its last member's reach)."""
    gap = np.concatenate(([True], header[1:] - np.maximum.accumulate(reach)[:-1] > _GAP_BYTES))
    chunk = (header - header[gap][np.cumsum(gap) - 1]) // _WINDOW_BYTES
    gap[1:] |= chunk[1:] != chunk[:-1]
    return np.flatnonzero(gap)[1:].tolist() + [len(header)]


def index_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices ``starts[0] .. starts[0] + lengths[0] - 1, starts[1] ..``, concatenated: a
    running sum of steps of 1 that jump to each range's start (no ``np.repeat``, ~10x faster)."""
    starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
    if not lengths.all():
        starts, lengths = starts[lengths > 0], lengths[lengths > 0]
    if not lengths.size:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    steps = np.ones(int(ends[-1]), np.int64)
    steps[0] = starts[0]
    steps[ends[:-1]] = starts[1:] - (starts[:-1] + lengths[:-1] - 1)
    return np.cumsum(steps, out=steps)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))
