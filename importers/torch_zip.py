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
import math
import os
import pickle
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


# typed storage class -> (numpy dtype, is floating point)
STORAGE_DTYPES = {"FloatStorage": ("<f4", True), "DoubleStorage": ("<f8", True), "HalfStorage": ("<f2", True),
                  "BFloat16Storage": ("<u2", True), "LongStorage": ("<i8", False), "IntStorage": ("<i4", False),
                  "ShortStorage": ("<i2", False), "CharStorage": ("i1", False), "ByteStorage": ("u1", False),
                  "BoolStorage": ("?", False)}
_STORAGE_TYPES = {kind: _StorageType(kind, dtype, floating) for kind, (dtype, floating) in STORAGE_DTYPES.items()}
_LOCAL_HEADER_BYTES = 30  # zip local file header before the name and extra field
_EXTRA_GUESS_BYTES = 128  # torch pads the extra field to align data to 64 bytes
_CENTRAL_HEADER_BYTES = 46  # zip central directory entry before its name, extra field and comment
_EOCD_BYTES, _ZIP64_LOCATOR_BYTES, _ZIP64_EOCD_BYTES = 22, 20, 56
_MAX_COMMENT_BYTES = 65535
_WINDOW_BYTES = 16 * 2**20  # one pread of wanted storages spans at most this much ...
_GAP_BYTES = 256 * 2**10  # ... and skips no gap larger than this between two of them
_UTF8_FLAG, _ENCRYPTED_FLAGS = 0x800, 0x41  # general purpose bits: utf-8 names; (strong) encryption


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
    index: dict[str, int]  # name -> member (the last of duplicate names, as zipfile)
    header_offsets: np.ndarray  # int64: where each member's local header starts
    file_sizes: np.ndarray  # int64: uncompressed bytes
    compress_sizes: np.ndarray  # int64
    name_bytes: np.ndarray  # int64: the encoded name's length (the local header repeats it)
    stored: np.ndarray  # bool: not compressed
    crcs: np.ndarray  # uint32

    @classmethod
    def from_zipfile(cls, archive: zipfile.ZipFile) -> "ZipDirectory":
        """The same arrays from a :class:`zipfile.ZipFile` (archives numpy does not read)."""
        infos = archive.infolist()
        names = [info.filename for info in infos]
        return cls(names, dict(zip(names, range(len(names)))),
                   np.array([i.header_offset for i in infos], np.int64), np.array([i.file_size for i in infos], np.int64),
                   np.array([i.compress_size for i in infos], np.int64),
                   np.array([len(i.orig_filename.encode("utf-8" if i.flag_bits & _UTF8_FLAG else "cp437"))
                             for i in infos], np.int64),
                   np.array([i.compress_type == zipfile.ZIP_STORED for i in infos], bool),
                   np.array([i.CRC for i in infos], np.uint32))


def read_zip_directory(fd: int, size: int) -> ZipDirectory | None:
    """A zip file's central directory read with numpy, or None where anything is unusual
    (zipfile then reads it): a comment or data before the archive, more than one disk,
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
    starts = np.flatnonzero(raw[:-3] == 0x50)
    starts = starts[(raw[starts + 1] == 0x4B) & (raw[starts + 2] == 1) & (raw[starts + 3] == 2)]
    if starts.size != entries or starts[0] != 0 or starts[-1] + _CENTRAL_HEADER_BYTES > cd_size:
        return None

    def field(offset: int, width: int) -> np.ndarray:
        value = np.zeros(starts.size, np.int64)
        for byte in range(width):
            value |= raw[starts + offset + byte].astype(np.int64) << (8 * byte)
        return value

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
    names = _names(raw, starts + _CENTRAL_HEADER_BYTES, name_bytes, "utf-8" if utf8.all() else "cp437")
    if names is None:
        return None
    return ZipDirectory(names, dict(zip(names, range(len(names)))), header_offsets, file_sizes,
                        compress_sizes, name_bytes, np.ones(len(names), bool), crcs.astype(np.uint32))


def _names(raw: np.ndarray, starts: np.ndarray, lengths: np.ndarray, encoding: str) -> list[str] | None:
    """Every member name, gathered with one mask and decoded once (a newline after each)."""
    marked = np.empty(raw.size + 1, np.uint8)
    marked[:-1] = raw
    marked[starts + lengths] = ord("\n")  # the byte after each name: the next field or entry
    step = np.zeros(raw.size + 2, np.int8)
    step[starts] = 1  # names never overlap, nor does one's end touch another's start
    step[starts + lengths + 1] = -1
    text = marked[np.cumsum(step[:-1], dtype=np.int8).astype(bool)].tobytes()
    if text.count(b"\n") != starts.size or b"\x00" in text:
        return None
    try:
        return text.decode(encoding).split("\n")[:-1]
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class TensorTable:
    """The floating point tensors of a state_dict as the pickle declares them (nothing read):
    keys in file order, and per key the rebuild arguments (storage id, offset, shape,
    stride, ...), every one checked well-formed."""

    keys: list[str]
    args: list[tuple]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return list(map(itemgetter(2), self.args))


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


class StorageReader:
    """Reads tensor values straight from the zip's stored (uncompressed) members."""

    def __init__(self, path: Path, name: str, limits: Limits) -> None:
        self.name, self.limits, self.prefix, self.archive = name, limits, "", None
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
        i = self.directory.index.get(member)
        if i is None:
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
        then decides). All records are checked together (C-level ``map`` over them)."""
        pairs = [(k, v) for k, v in state.items() if type(k) is str and type(v) is _TensorArgs]
        keys = list(map(itemgetter(0), pairs))
        args = list(map(attrgetter("args"), map(itemgetter(1), pairs)))
        del pairs
        if not args:
            return TensorTable([], [])
        if min(map(len, args)) < 4:
            return None
        ids, offsets, shapes, strides = (list(map(itemgetter(i), args)) for i in range(4))
        if not (_types(ids) <= {tuple} and set(map(len, ids)) == {5}):
            return None
        kinds = list(map(itemgetter(1), ids))
        if not (set(map(itemgetter(0), ids)) == {"storage"} and _types(kinds) <= {_StorageType}
                and _types(map(itemgetter(2), ids)) <= {str} and _types(map(itemgetter(4), ids)) <= {int}
                and _types(offsets) <= {int} and _types(shapes) <= {tuple} and _types(strides) <= {tuple}):
            return None
        dims = list(itertools.chain.from_iterable(shapes))
        steps = list(itertools.chain.from_iterable(strides))
        if not (_types(dims) <= {int} and _types(steps) <= {int} and min(offsets) >= 0 and min(dims, default=0) >= 0):
            return None
        floating = list(map(attrgetter("floating"), kinds))
        if not all(floating):
            keys, args = list(itertools.compress(keys, floating)), list(itertools.compress(args, floating))
        return TensorTable(keys, args)

    def values(self, table: TensorTable, positions: Sequence[int]) -> tuple[np.ndarray, list[int]] | None:
        """The values of the tensors at ``positions`` of ``table``, as float32, one after
        another in one flat array, and where each starts in it (one more: the end); None if
        one of them is not contiguous (a strided view: torch.load rebuilds it).

        Raises
        ------
        UnsupportedFileError
            A storage the archive lacks, shorter than its tensors, or over ``max_tensor_bytes``.
        """
        args = [table.args[i] for i in positions]
        if not args:
            return np.zeros(0, np.float32), [0]
        ids, offsets, shapes, strides = (list(map(itemgetter(i), args)) for i in range(4))
        numels = list(map(math.prod, shapes))
        if any(n > 1 and (st != (1,) if len(sh) == 1 else st != _contiguous_strides(sh))
               for sh, st, n in zip(shapes, strides, numels)):
            return None
        itemsizes = [np.dtype(i[1].dtype).itemsize for i in ids]
        for key, shape, numel, itemsize in zip(map(table.keys.__getitem__, positions), shapes, numels, itemsizes):
            if numel * itemsize > self.limits.max_tensor_bytes:
                check_tensor_shape(self.name, key, shape, itemsize, self.limits)
        members = [f"{self.prefix}data/{i[2]}" for i in ids]
        index = self.directory.index
        found = [index.get(m, -1) for m in members]
        if min(found) < 0:
            raise UnsupportedFileError(f"{self.name}: the pickle names a storage "
                                       f"{members[found.index(-1)]} the archive lacks")
        member = np.array(found, np.int64)
        numel = np.array(numels, np.int64)
        itemsize = np.array(itemsizes, np.int64)
        offset = np.array(offsets, np.int64)
        past = (offset + numel > np.array(list(map(itemgetter(4), ids)), np.int64)) | \
            ((offset + numel) * itemsize > self.directory.file_sizes[member])
        if past.any():
            bad = int(np.flatnonzero(past)[0])
            raise UnsupportedFileError(f"{self.name}: storage {members[bad]} is shorter than its tensors")
        starts = np.concatenate(([0], np.cumsum(numel)))
        flat = np.empty(int(starts[-1]), np.float32)
        if not self.directory.stored[member].all():  # zipfile inflates them (not torch's own files)
            for at, m, ident, first, count in zip(starts.tolist(), members, ids, offsets, numels):
                data = read_member(self.archive, m, self.name, self.limits.max_tensor_bytes)
                flat[at:at + count] = _widened(np.frombuffer(data, ident[1].dtype, count,
                                                             first * np.dtype(ident[1].dtype).itemsize), ident[1])
            return flat, starts.tolist()
        kinds = [i[1].name for i in ids]
        for kind in set(kinds):
            group = np.flatnonzero(np.array(kinds) == kind) if len(set(kinds)) > 1 else np.arange(len(kinds))
            self._gather(flat, starts, _STORAGE_TYPES[kind], member[group], offset[group], numel[group], group)
        return flat, starts.tolist()

    def _gather(self, flat: np.ndarray, starts: np.ndarray, kind: _StorageType, member: np.ndarray,
                offset: np.ndarray, numel: np.ndarray, group: np.ndarray) -> None:
        """Read one storage type's tensors into ``flat``, a few large preads at a time."""
        itemsize = np.dtype(kind.dtype).itemsize
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
            raw = window[_ranges(begin, size)].view(kind.dtype)
            flat[_ranges(starts[group[first:last]], numel[first:last])] = _widened(raw, kind)
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


def _widened(raw: np.ndarray, kind: _StorageType) -> np.ndarray:
    """Stored values as numbers float32 can take (bf16: the high half of a float32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32) if kind.name == "BFloat16Storage" else raw


def _types(values: Any) -> set[type]:
    return set(map(type, values))


def _windows(header: np.ndarray, reach: np.ndarray) -> list[int]:
    """Ends of runs of sorted members read with one pread each: a run skips no gap over
    ``_GAP_BYTES`` and spans at most ``_WINDOW_BYTES`` (or one member, if larger)."""
    ends, start, top = [], int(header[0]), int(reach[0])
    for i, (at, end) in enumerate(zip(header[1:].tolist(), reach[1:].tolist()), start=1):
        if at - top > _GAP_BYTES or max(top, end) - start > _WINDOW_BYTES:
            ends.append(i)
            start, top = at, end
        else:
            top = max(top, end)
    return ends + [len(header)]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices ``starts[0] .. starts[0] + lengths[0] - 1, starts[1] ..``, concatenated."""
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - before, lengths) + np.arange(total)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))
