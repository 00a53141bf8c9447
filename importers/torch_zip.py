"""PyTorch state_dict files read without torch: a restricted unpickler over the zip format.

``torch.load(weights_only=True)`` is safe but runs a pure-Python unpickler: a state_dict with
10^6 keys takes minutes. A plain state_dict (dicts of tensors, as ``torch.save(model.state_dict())``
writes it) needs only four globals: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter`` and the typed storage classes. :func:`read_torch_zip` maps
exactly those to small local stand-ins (nothing of torch runs), unpickles with Python's C
unpickler, reads only the storages whose values are wanted (``os.pread`` on the stored zip
members: no mmap, no whole-file read) and returns ``None`` for anything else, which then goes
to ``torch.load(weights_only=True)`` and its refusals.
"""

from __future__ import annotations

import collections
import gc
import io
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from morphscope.errors import UnsupportedFileError
from morphscope.importers.limits import DEFAULT_LIMITS, Limits, check_tensor_shape, open_zip, read_member

# typed storage class -> (numpy dtype, is floating point); bf16 is read as uint16 and widened
STORAGE_DTYPES = {"FloatStorage": ("<f4", True), "DoubleStorage": ("<f8", True), "HalfStorage": ("<f2", True),
                  "BFloat16Storage": ("<u2", True), "LongStorage": ("<i8", False), "IntStorage": ("<i4", False),
                  "ShortStorage": ("<i2", False), "CharStorage": ("i1", False), "ByteStorage": ("u1", False),
                  "BoolStorage": ("?", False)}
_LOCAL_HEADER_BYTES = 30  # zip local file header before the name and extra field
_EXTRA_GUESS_BYTES = 128  # torch pads the extra field to align data to 64 bytes


class _NotPlain(Exception):
    """The pickle needs more than a plain state_dict: let torch.load decide."""


class _StorageType(NamedTuple):
    name: str


class _Storage(NamedTuple):
    kind: str
    key: str
    numel: int


class TensorRecord(NamedTuple):
    """A tensor as the pickle declares it: storage, offset, shape, stride (nothing read)."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def is_floating_point(self) -> bool:
        return STORAGE_DTYPES[self.storage.kind][1]


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> TensorRecord:
    if not isinstance(storage, _Storage):
        raise _NotPlain("tensor without a storage")
    return TensorRecord(storage, int(offset), tuple(map(int, shape)), tuple(map(int, stride)))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            **{("torch", kind): _StorageType(kind) for kind in STORAGE_DTYPES}}


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise _NotPlain(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise _NotPlain("unexpected persistent id")
        return _Storage(pid[1].name, pid[2], pid[4])


def read_torch_zip(path: Path, name: str, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, "_StorageReader"] | None:
    """The unpickled object of a plain state_dict file, with :class:`TensorRecord` in place of
    tensors, and a reader for their values; ``None`` if the file is not a zip or its pickle
    needs anything beyond a plain state_dict.

    Raises
    ------
    UnsupportedFileError, UnsafeFileError
        A zip bomb, a member outside the archive, or a corrupt pickle stream.
    """
    if not zipfile.is_zipfile(path):
        return None
    archive = open_zip(path, name, limits)
    try:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            return None
        prefix = pickles[0][:-len("data.pkl")]
        data = read_member(archive, pickles[0], name, limits.max_json_bytes)
        collecting = gc.isenabled()
        gc.disable()  # millions of small containers: the cyclic collector cost ~60% of the load
        try:
            obj = _StateDictUnpickler(io.BytesIO(data)).load()
        except _NotPlain:
            return None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
            raise UnsupportedFileError(f"{name}: not a readable PyTorch file (corrupt pickle: "
                                       f"{type(err).__name__})") from err
        finally:
            if collecting:
                gc.enable()
        return obj, _StorageReader(path, name, archive, prefix, limits)
    except BaseException:
        archive.close()
        raise


class _StorageReader:
    """Reads tensor values straight from the zip's stored (uncompressed) members."""

    def __init__(self, path: Path, name: str, archive: zipfile.ZipFile, prefix: str, limits: Limits) -> None:
        self.name, self.archive, self.prefix, self.limits = name, archive, prefix, limits
        self.infos = {info.filename: info for info in archive.infolist()}
        self.fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        os.close(self.fd)
        self.archive.close()

    def values(self, key: str, tensor: TensorRecord) -> np.ndarray | None:
        """The tensor's values as float32, or None where it is not a contiguous float tensor."""
        dtype, floating = STORAGE_DTYPES[tensor.storage.kind]
        shape = tensor.shape
        numel = math.prod(shape)
        if not floating or (numel > 1 and tensor.stride != _contiguous_strides(shape)):
            return None
        itemsize = np.dtype(dtype).itemsize
        if numel * itemsize > self.limits.max_tensor_bytes:
            check_tensor_shape(self.name, key, shape, itemsize, self.limits)
        if tensor.offset < 0 or tensor.offset + numel > tensor.storage.numel:
            raise UnsupportedFileError(f"{self.name}: tensor {key} reaches past its storage")
        raw = self._read(tensor.storage.key, tensor.offset * itemsize, numel * itemsize)
        array = np.frombuffer(raw, dtype=dtype)
        if tensor.storage.kind == "BFloat16Storage":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(np.float32).reshape(shape)

    def _read(self, storage_key: str, start: int, length: int) -> bytes:
        """One ``pread`` of the local header, name, extra field and data of a stored member."""
        member = f"{self.prefix}data/{storage_key}"
        info = self.infos.get(member)
        if info is None:
            raise UnsupportedFileError(f"{self.name}: the pickle names a storage {member} the archive lacks")
        if start + length > info.file_size:
            raise UnsupportedFileError(f"{self.name}: storage {member} is shorter than its tensors")
        if info.compress_type != zipfile.ZIP_STORED:  # torch stores; anything else goes the slow way
            return read_member(self.archive, member, self.name, self.limits.max_tensor_bytes)[start:start + length]
        guess = _LOCAL_HEADER_BYTES + len(info.orig_filename.encode()) + _EXTRA_GUESS_BYTES
        chunk = os.pread(self.fd, guess + start + length, info.header_offset)
        if len(chunk) < _LOCAL_HEADER_BYTES or chunk[:4] != b"PK\x03\x04":
            raise UnsupportedFileError(f"{self.name}: corrupt zip member {member}")
        data_start = (_LOCAL_HEADER_BYTES + int.from_bytes(chunk[26:28], "little")
                      + int.from_bytes(chunk[28:30], "little") + start)
        raw = chunk[data_start:data_start + length] if data_start <= guess + start else \
            os.pread(self.fd, length, info.header_offset + data_start)
        if len(raw) != length:
            raise UnsupportedFileError(f"{self.name}: storage {member} is truncated")
        return raw


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))
