"""Trained gammas (or a learned structure) from a file, matched to a graph's bn ops.

Formats: PyTorch state_dicts (``.pt``/``.pth``, read with ``weights_only=True``) and
``.safetensors``; Keras ``.keras``, ``.weights.h5`` and legacy ``.h5`` (read with h5py as
plain arrays: nothing is deserialized as code); morph-net StructureExporter files
(``learned_structure/alive_<step>``, JSON from op name to alive count) and our own
``.json`` of the same form.
"""

from __future__ import annotations

import functools
import heapq
import io
import itertools
import math
import re
from operator import attrgetter, itemgetter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

import numpy as np

from morphscope.importers.kernels import source_kernels
from morphscope.errors import CheckpointMismatchError, UnsupportedFileError
from morphscope.graph import ChannelGraph, Kind
from morphscope.importers.h5safe import open_h5
from morphscope.importers.limits import (DEFAULT_LIMITS, Limits, check_tensor_shape, describe_error,
                                         loads_json, open_zip, read_member)
from morphscope.importers.load import check_file, read_torch_pickle
from morphscope.importers.runs import ALIVE_NAME
from morphscope.importers.torch_zip import (STATE_DICT_WRAPPERS, index_ranges, padded_rows, paused_gc,
                                            shape_tuples)

MAX_CHECKPOINT_BYTES = DEFAULT_LIMITS.max_file_bytes
MAX_ALIVE_JSON_BYTES = 64 * 2**20
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".keras", ".weights.h5",
                       ".h5", ".hdf5")
# Path segments training wrappers add to state_dict keys: DDP / DataParallel (``module.``, leading
# only: a model may own a submodule called "module"), torch.compile, FSDP (full state dict),
# activation checkpointing, Lightning's forward wrapper.
LEADING_WRAPPERS = ("module",)
WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module",
                              "_forward_module", "_fpw_module"})
# Top-level HDF5 groups Keras writes for the optimizer's state (slots, iteration): not layers.
OPTIMIZER_GROUPS = frozenset({"optimizer", "optimizer_weights"})
# morph-net names ops by their TF op: "conv1/Conv2D", "block/dense/MatMul".
_TF_OP_SUFFIX = re.compile(r"/(Conv2D|Conv3D|Conv2DBackpropInput|DepthwiseConv2dNative|MatMul|"
                           r"BiasAdd|FusedBatchNorm\w*|Relu\w*|convolution)$")


@dataclass(frozen=True)
class LearnedStructure:
    """What one checkpoint says: bn scale vectors by bn op, or alive counts by source op."""

    source: str
    gammas: dict[str, np.ndarray] = field(default_factory=dict)
    alive_counts: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    kernels: dict[str, np.ndarray] = field(default_factory=dict)  # group lasso: out-first kernels


@dataclass(frozen=True)
class CheckpointTensors:
    """What matching needs from a checkpoint, as plain data: every floating point tensor's
    shape by key, and the values of those with at most one axis (bn scales are among them),
    or of every tensor when read with ``full=True`` (group lasso needs the kernels).
    Keys carry no training-wrapper segments (``module.``, ``_orig_mod.``, FSDP's).
    A plain PyTorch state_dict's come as :class:`FlatArrays` and :class:`IndexedShapes`."""

    arrays: Mapping[str, np.ndarray]
    shapes: Mapping[str, tuple[int, ...]]

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> "CheckpointTensors":
        """From key -> array (any shapes), all values kept."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        return cls(arrays, {k: tuple(v.shape) for k, v in arrays.items()})


class IndexedShapes(Mapping):
    """key -> shape: ``names[i]``'s is the first ``ndim[i]`` entries of row ``i`` of ``dims``
    (names distinct). A 10^6-key checkpoint's shapes as a list and two arrays: a shape tuple
    is made only when one is asked for, the name -> row dict (``index``) only at the first
    lookup (matching a checkpoint that fits needs none: it iterates the names and finds the
    bn scales among the arrays'); iterates in ``names``' order."""

    def __init__(self, names: list[str], ndim: np.ndarray, dims: np.ndarray) -> None:
        self.names, self.ndim, self.dims = names, ndim, dims

    @classmethod
    def of(cls, shapes: Mapping[str, tuple[int, ...]]) -> "IndexedShapes":
        """``shapes`` as an IndexedShapes (itself if it is one)."""
        if isinstance(shapes, IndexedShapes):
            return shapes
        tuples = list(shapes.values())
        ndim = np.fromiter(map(len, tuples), np.int64, len(tuples))
        return cls(list(shapes), ndim, padded_rows(ndim, list(itertools.chain.from_iterable(tuples)), 1))

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return dict(zip(self.names, range(len(self.names))))

    def __getitem__(self, key: str) -> tuple[int, ...]:
        i = self.index[key]
        return tuple(self.dims[i, :self.ndim[i]].tolist())

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def keys(self):
        return self.index.keys()

    def values(self) -> list[tuple[int, ...]]:
        return shape_tuples(self.ndim, self.dims)

    def items(self):
        return zip(self.names, self.values())

    def __repr__(self) -> str:
        return f"IndexedShapes({len(self)} keys)"


class FlatArrays(Mapping):
    """key -> float32 array, a view of one flat buffer: the values of ``shapes.index[key] = i``
    are ``flat[starts[i]:starts[i + 1]]`` in ``shapes[key]`` (no array object until asked
    for); matching gathers all bn scales from ``flat`` with one numpy index."""

    def __init__(self, flat: np.ndarray, starts: np.ndarray, shapes: IndexedShapes) -> None:
        self.flat, self.starts, self.shapes = flat, starts, shapes

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> "FlatArrays":
        """``arrays`` as FlatArrays (itself if it is one; else copied, as float32)."""
        if isinstance(arrays, FlatArrays):
            return arrays
        values = list(arrays.values())
        sizes = np.fromiter(map(attrgetter("size"), values), np.int64, len(values))
        flat = np.concatenate([np.ravel(v) for v in values], dtype=np.float32) if values else np.zeros(0, np.float32)
        return cls(flat, np.concatenate(([0], np.cumsum(sizes))),
                   IndexedShapes.of({k: v.shape for k, v in arrays.items()}))

    def __getitem__(self, key: str) -> np.ndarray:
        i = self.shapes.index[key]
        values = self.flat[self.starts[i]:self.starts[i + 1]]
        return values if self.shapes.ndim[i] == 1 else values.reshape(self.shapes[key])

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def keys(self):
        return self.shapes.keys()

    def __repr__(self) -> str:
        return f"FlatArrays({len(self)} keys, {self.flat.size} values)"


def unwrap_key(key: str) -> str:
    """A state_dict key without training wrappers: ``module._orig_mod.layer1.0.bn1.weight``
    and ``_fsdp_wrapped_module.layer1._fsdp_wrapped_module.0.bn1.weight`` -> ``layer1.0.bn1.weight``."""
    parts = key.split(".")
    start = 0
    while start < len(parts) - 1 and (parts[start] in LEADING_WRAPPERS or parts[start] in WRAPPER_SEGMENTS):
        start += 1
    return ".".join(p for p in parts[start:] if p not in WRAPPER_SEGMENTS)


def unwrap_keys(keys: list[str]) -> tuple[list[str], bool]:
    """:func:`unwrap_key` on every key, after one scan of all keys together: keys without
    wrappers (the usual case) come back as they are, keys all under one leading ``module.``
    (DDP) lose it by slicing; only others are split key by key. Also whether distinct keys
    surely stay distinct (not after key-by-key unwrapping: ``module.x`` and ``x``).

    Examples
    --------
    >>> unwrap_keys(["module.conv.weight", "module.bn.bias"])
    (['conv.weight', 'bn.bias'], True)
    """
    joined = "\n" + "\n".join(keys) + "\n"
    if joined.count("\n") != len(keys) + 1 or any(
            f"{a}{segment}{b}" in joined for segment in WRAPPER_SEGMENTS for a in ".\n" for b in ".\n"):
        return [unwrap_key(k) for k in keys], False
    heads = [f"\n{wrapper}." for wrapper in LEADING_WRAPPERS]
    if not any(head in joined for head in heads):
        return keys, True
    for head in heads:  # every key under it once, none under two: strip it by slicing
        if joined.count(head) == len(keys) and not any(f"{head}{h[1:]}" in joined for h in heads):
            return [k[len(head) - 1:] for k in keys], True
    return [unwrap_key(k) for k in keys], False


def checkpoint_suffix(path: Path, name: str) -> str:
    """The checkpoint type of ``path`` (its suffix, ``.weights.h5`` counted as ``.h5``)."""
    lowered = name.lower() if name.lower().endswith(CHECKPOINT_SUFFIXES) else path.name.lower()
    for suffix in CHECKPOINT_SUFFIXES:
        if lowered.endswith(suffix):
            return ".h5" if suffix == ".weights.h5" else suffix
    raise UnsupportedFileError(f"{name}: unknown checkpoint type; choose from .pt, .pth, "
                               ".safetensors, .keras, .weights.h5, .h5, or a morph-net alive JSON")


def read_checkpoint(path: str | Path, name: str | None = None, limits: Limits = DEFAULT_LIMITS,
                    full: bool = False, wanted: Collection[str] | None = None) -> CheckpointTensors:
    """A checkpoint file's tensors by key (PyTorch, safetensors or Keras h5/zip), in this
    process (the isolated worker runs this), declared sizes checked first. Values of tensors
    with at most one axis only, unless ``full``; of a plain PyTorch state_dict, only those
    of the (unwrapped) keys in ``wanted`` where given (the bn scales a graph needs: a 10^6-key
    file then reads a few storages, not all its vectors).

    Raises
    ------
    UnsupportedFileError, UnsafeFileError
        For missing, empty, oversized, corrupt, code-carrying or outward-pointing files.
    """
    path = Path(path)
    name = name or str(path)
    check_file(path, limits.max_file_bytes, name)
    suffix = checkpoint_suffix(path, name)
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        with paused_gc():
            fast = _plain_state_dict(path, name, limits, full, wanted)  # no torch: seconds for 10^6 keys
        return fast or _torch_tensors(name, read_torch_pickle(path, name, limits), full)
    if suffix == ".safetensors":
        return _safetensors(path, name, limits, full)
    if suffix == ".keras":
        with open_zip(path, name, limits) as archive:
            data = read_member(archive, "model.weights.h5", name, limits.max_unzipped_bytes)
        return _h5_tensors(name, io.BytesIO(data), limits, full)
    return _h5_tensors(name, path, limits, full)


def _state_dict_of(name: str, obj: Any) -> dict[Any, Any]:
    for wrapper in STATE_DICT_WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise UnsupportedFileError(f"{name}: holds a {type(obj).__name__}, not a state_dict")
    return obj


def _torch_tensors(name: str, obj: Any, full: bool) -> CheckpointTensors:
    import torch

    arrays, shapes = {}, {}
    for key, value in _state_dict_of(name, obj).items():
        if isinstance(key, str) and isinstance(value, torch.Tensor) and value.is_floating_point():
            key = unwrap_key(key)
            shapes[key] = tuple(value.shape)
            if full or value.dim() <= 1:
                arrays[key] = value.detach().float().numpy()
    if not shapes:
        raise UnsupportedFileError(f"{name}: the state_dict holds no floating point tensors")
    return CheckpointTensors(arrays, shapes)


def _plain_state_dict(path: Path, name: str, limits: Limits, full: bool,
                      wanted: Collection[str] | None) -> CheckpointTensors | None:
    """A plain state_dict read by :func:`~morphscope.importers.torch_zip.read_torch_zip`, or
    None where only ``torch.load`` can read the file. Keys are unwrapped and matched to
    ``wanted`` all together; only the wanted storages are read."""
    from morphscope.importers.torch_zip import read_torch_zip

    found = read_torch_zip(path, name, limits)
    if found is None:
        return None
    obj, reader = found
    try:
        table = reader.table(_state_dict_of(name, obj))
        del obj
        if table is None:
            return None
        if not table.keys:
            raise UnsupportedFileError(f"{name}: the state_dict holds no floating point tensors")
        keys, distinct = unwrap_keys(table.keys)
        rows = np.arange(len(keys))
        if not distinct:  # table keys are distinct (a dict's, or runs checked for repeats); these may not be
            last = dict(zip(keys, rows.tolist()))  # two made one: the last counts, in the first's place
            rows = np.fromiter(last.values(), np.int64, len(last))
            keys = list(last)
        ndim, dims = table.ndim[rows], table.dims[rows]
        if wanted is None or full:
            chosen = np.arange(len(keys))
        else:  # one C-level scan of the keys for the wanted ones: no dict of every key
            wanted = set(wanted)
            chosen = np.flatnonzero(np.fromiter(map(wanted.__contains__, keys), bool, len(keys)))
            if not chosen.size:  # the network under an attribute (Lightning's ``model.``): below the owner
                below = (k.partition(".")[2] for k in keys)
                chosen = np.flatnonzero(np.fromiter(map(wanted.__contains__, below), bool, len(keys)))
        positions = chosen if full else chosen[ndim[chosen] <= 1]
        found_values = reader.values(table, rows[positions])
        if found_values is None:
            return None  # a strided view: torch.load rebuilds it
        flat, starts = found_values
    finally:
        reader.close()
    arrays = IndexedShapes(list(map(keys.__getitem__, positions.tolist())), ndim[positions], dims[positions])
    return CheckpointTensors(FlatArrays(flat, starts, arrays), IndexedShapes(keys, ndim, dims))


_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}
_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                         "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1,
                         "F8_E5M2": 1, "F8_E4M3": 1}


def _safetensors(path: Path, name: str, limits: Limits, full: bool) -> CheckpointTensors:
    """Read the header ourselves (8-byte length, JSON), check every declared shape and offset
    against the file, then read only the floating point vectors."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        header_bytes = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= header_bytes <= min(size - 8, limits.max_json_bytes):
            raise UnsupportedFileError(f"{name}: not a readable safetensors file (header length "
                                       f"{header_bytes} does not fit the file's {size} bytes)")
        header = loads_json(handle.read(header_bytes), name, limits, "safetensors header")
        if not isinstance(header, dict):
            raise UnsupportedFileError(f"{name}: not a readable safetensors file (header is not an object)")
        data_start = 8 + header_bytes
        arrays, shapes = {}, {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            dtype, shape, offsets = _safetensors_entry(name, key, entry, limits)
            begin, end = offsets
            if not 0 <= begin <= end <= size - data_start or end - begin != math.prod(shape) * _SAFETENSORS_ITEMSIZE[dtype]:
                raise UnsupportedFileError(f"{name}: not a readable safetensors file (tensor {key}: "
                                           f"offsets {offsets} do not fit shape {list(shape)} and the file)")
            if dtype not in _SAFETENSORS_DTYPES:
                continue
            key = unwrap_key(key)
            shapes[key] = shape
            if full or len(shape) <= 1:
                handle.seek(data_start + begin)
                raw = np.frombuffer(handle.read(end - begin), dtype=_SAFETENSORS_DTYPES[dtype])
                arrays[key] = ((raw.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16"
                                else raw.astype(np.float32)).reshape(shape)
    return CheckpointTensors(arrays, shapes)


def _safetensors_entry(name: str, key: str, entry: Any, limits: Limits) -> tuple[str, tuple[int, ...], list[int]]:
    if not (isinstance(entry, dict) and entry.get("dtype") in _SAFETENSORS_ITEMSIZE
            and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2 and all(isinstance(o, int) for o in entry["data_offsets"])):
        raise UnsupportedFileError(f"{name}: not a readable safetensors file (tensor {key}: "
                                   "expected dtype, shape and data_offsets)")
    dtype = entry["dtype"]
    shape = check_tensor_shape(name, key, entry["shape"], _SAFETENSORS_ITEMSIZE[dtype], limits)
    return dtype, shape, entry["data_offsets"]


def _h5_tensors(name: str, source: Any, limits: Limits, full: bool) -> CheckpointTensors:
    """Keras 3 files: ``layers/<x>/vars/<i>`` groups named by a ``name`` attribute
    (-> ``<layer>/vars/<i>``); legacy h5: ``model_weights/<layer>/<layer>/<var>``
    (-> ``<layer>/<var>``). The optimizer's groups are skipped; the file is checked by
    :func:`~morphscope.importers.h5safe.check_h5` before anything is read."""
    import h5py

    arrays, shapes = {}, {}

    def visit(path: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or obj.ndim == 0 or obj.dtype.kind != "f":
            return
        parts = path.split("/")
        if parts[0] in OPTIMIZER_GROUPS:
            return
        if "vars" in parts:  # Keras 3 format
            layer = obj.parent.attrs.get("name", parts[-3] if len(parts) > 2 else parts[0])
            key = f"{layer}/vars/{parts[-1]}"
        else:  # legacy: .../<layer>/<layer>/<var>[:0]
            key = f"{parts[-2] if len(parts) > 1 else ''}/{parts[-1].split(':')[0]}"
        shapes[key] = tuple(obj.shape)
        if full or obj.ndim == 1:
            arrays[key] = obj[()].astype(np.float32)

    with open_h5(source, name, limits) as h5file:
        try:
            h5file.visititems(visit)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
            raise UnsupportedFileError(f"{name}: corrupt HDF5 file ({describe_error(err)})") from err
    if not shapes:
        raise UnsupportedFileError(f"{name}: the HDF5 file holds no weights")
    return CheckpointTensors(arrays, shapes)


def read_alive_json(path: str | Path, name: str | None = None, limits: Limits = DEFAULT_LIMITS) -> dict[str, int]:
    """A morph-net StructureExporter file: a JSON object from op name to alive count."""
    path = Path(path)
    name = name or str(path)
    check_file(path, MAX_ALIVE_JSON_BYTES, name)
    doc = loads_json(path.read_bytes(), name, limits, "alive file")
    if not isinstance(doc, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                            for v in doc.values()):
        raise UnsupportedFileError(f"{name}: expected a JSON object from op name to alive count")
    return doc


def is_alive_json(path: str | Path) -> bool:
    """morph-net alive files have no extension (``alive_12000``); ours end in ``.json``."""
    path = Path(path)
    return path.suffix.lower() == ".json" or ALIVE_NAME.fullmatch(path.name) is not None


def load_structure(graph: ChannelGraph, path: str | Path, name: str | None = None,
                   limits: Limits = DEFAULT_LIMITS, isolate: bool = True) -> LearnedStructure:
    """Read a checkpoint or alive file and match it to ``graph``.

    Parameters
    ----------
    name : str, optional
        The user's name for the file (an upload's own name), used in messages.
    isolate : bool
        Read the file in a limited child process (default; see
        :mod:`~morphscope.importers.isolation`); False reads it in this process.

    Raises
    ------
    CheckpointMismatchError
        If the file does not fit the model: missing or unknown keys, wrong shapes, NaN/inf scales.
    UnsupportedFileError, UnsafeFileError
        If the file cannot be read safely.
    """
    from morphscope.importers import isolation

    name = name or str(path)
    if is_alive_json(name) or is_alive_json(path):
        reader = isolation.read_alive_isolated if isolate else read_alive_json
        return match_alive_counts(graph, reader(path, name, limits), name)
    bns = _bn_ops(graph)
    full = not bns  # no bn scales: group lasso reads the kernels
    wanted = None if full else (set(map(itemgetter("gamma_key"), map(itemgetter(1), bns)))
                                if graph.framework == "torch" else
                                {k for _, a in bns for k in _bn_lookup_keys(graph, a["gamma_key"])})
    reader = isolation.read_checkpoint_isolated if isolate else read_checkpoint
    with paused_gc():
        return _match_gammas(graph, reader(path, name, limits, full, wanted), name, bns)


def _bn_ops(graph: ChannelGraph) -> list[tuple[str, dict[str, Any]]]:
    """The bn ops with a scale key, as (name, attrs) in :meth:`ChannelGraph.ops` order (read
    without its generator: half the time at 250,000 ops)."""
    order = graph.order()
    return [(n, a) for n, a in zip(order, map(graph.nx._node.__getitem__, order))
            if a["kind"] == Kind.BN and a.get("gamma_key")]


def _bn_lookup_keys(graph: ChannelGraph, gamma_key: str) -> tuple[str, ...]:
    if graph.framework == "keras":
        layer = gamma_key.split("/")[-2]
        return (f"{layer}/gamma", f"{layer}/vars/0")
    return (gamma_key,)


def _known_prefixes(graph: ChannelGraph) -> set[str]:
    """Layer names (Keras) or module paths (PyTorch) the model has weights under."""
    if graph.framework == "keras":
        return {n.split("/")[-1] for n in graph.nx} | {n.split("/")[-2] for n in graph.nx if "/" in n} \
            | set(graph.detached_params)
    return {k.rsplit(".", 1)[0] for k in _param_keys(graph)} | set(graph.detached_params)


def _param_keys(graph: ChannelGraph) -> set[str]:
    return set(itertools.chain.from_iterable(a.get("param_keys", ()) for a in graph.nx._node.values()))


def _prefix(graph: ChannelGraph, key: str) -> str:
    return key.split("/")[0] if graph.framework == "keras" else key.rsplit(".", 1)[0]


def _unknown_layers(graph: ChannelGraph, keys: Collection[str]) -> set[str]:
    """Prefixes of checkpoint keys the model has no weights under. PyTorch: keys the model
    names exactly are set aside first (one C-level filter over them), so only the rest are split."""
    if graph.framework != "keras":
        keys = list(itertools.filterfalse(_param_keys(graph).__contains__, keys))
        if not keys:
            return set()
    return {_prefix(graph, k) for k in keys} - _known_prefixes(graph)


def match_gammas(graph: ChannelGraph, tensors: CheckpointTensors | Mapping[str, np.ndarray],
                 source: str) -> LearnedStructure:
    """Pick each bn op's scale vector out of a checkpoint's tensors; report everything that
    does not fit. Dictionary lookups and one numpy pass over all scales together: linear in
    the number of keys and ops.

    Raises
    ------
    CheckpointMismatchError
        Missing scales, wrong shapes, layers the model does not have, or NaN/inf scales
        (naming the bn layer).
    """
    if not isinstance(tensors, CheckpointTensors):
        tensors = CheckpointTensors.from_arrays(tensors)
    with paused_gc():
        return _match_gammas(graph, tensors, source, _bn_ops(graph))


def _network_within(graph: ChannelGraph, tensors: CheckpointTensors,
                    bns: list[tuple[str, dict[str, Any]]]) -> tuple[CheckpointTensors, tuple[str, ...]]:
    """The keys of ``graph``'s network where the file holds it under an owner's attribute: a
    Lightning ``.ckpt`` keeps ``model.stem.1.weight`` for the LightningModule's ``self.model``
    (any owner path, found from the first bn scale or weight key); keys outside the owner are
    set aside, with a note. Everything else comes back as it is."""
    probe = bns[0][1]["gamma_key"] if bns else min(_param_keys(graph), default=None)
    if graph.framework != "torch" or probe is None or probe in tensors.shapes:
        return tensors, ()
    owner = next((k[:-len(probe)] for k in tensors.shapes if k.endswith("." + probe)), None)
    if owner is None:
        return tensors, ()
    shapes = _keys_under(tensors.shapes, owner)
    notes = (f"read the network under '{owner[:-1]}' (e.g. a LightningModule's attribute); "
             f"{len(tensors.shapes) - len(shapes)} other keys set aside",) if len(shapes) < len(tensors.shapes) else ()
    return CheckpointTensors(_keys_under(tensors.arrays, owner), shapes), notes


def _keys_under(mapping: Mapping[str, Any], owner: str) -> Mapping[str, Any]:
    """The entries of ``mapping`` whose key starts with ``owner``, the owner cut off (plain
    dicts, :class:`IndexedShapes` and :class:`FlatArrays` keep their type)."""
    names = list(mapping)
    rows = np.array([i for i, key in enumerate(names) if key.startswith(owner)], dtype=np.int64)
    kept = [names[i][len(owner):] for i in rows.tolist()]
    if isinstance(mapping, IndexedShapes):
        return IndexedShapes(kept, mapping.ndim[rows], mapping.dims[rows])
    if isinstance(mapping, FlatArrays):
        sizes = mapping.starts[rows + 1] - mapping.starts[rows]
        return FlatArrays(mapping.flat[index_ranges(mapping.starts[rows], sizes)],
                          np.concatenate(([0], np.cumsum(sizes))), _keys_under(mapping.shapes, owner))
    return dict(zip(kept, (mapping[names[i]] for i in rows.tolist())))


def _match_gammas(graph: ChannelGraph, tensors: CheckpointTensors, source: str,
                  bns: list[tuple[str, dict[str, Any]]]) -> LearnedStructure:
    tensors, notes = _network_within(graph, tensors, bns)
    if not bns:  # VGG without bn, MLPs: morph-net's group-lasso family scores the kernels
        kernels = source_kernels(graph, tensors.arrays, source)
        if not kernels:
            raise CheckpointMismatchError(f"{source}: the model {graph.name} has no bn scales "
                                          "(gammas): nothing to regularize or prune (and the file "
                                          "holds none of its conv or dense kernels for group lasso)")
        return LearnedStructure(source, kernels=kernels, notes=(
            "no bn scales: alive channels from kernel norms (group lasso)", *notes))
    shapes, arrays = tensors.shapes, tensors.arrays
    if isinstance(arrays, FlatArrays) and graph.framework != "keras":
        names, sizes, starts, flat, missing, wrong = _gather_scales(tensors, bns)
    else:
        names, vectors, missing, wrong = [], [], [], []
        for name, attrs in bns:
            key = next((k for k in _bn_lookup_keys(graph, attrs["gamma_key"]) if k in shapes), None)
            if key is None:
                missing.append(attrs["gamma_key"])
                continue
            size = math.prod(shapes[key])
            if size != attrs["out_channels"] or key not in arrays:
                wrong.append(f"{key} has {size} values, the model has {attrs['out_channels']}")
                continue
            names.append(name)
            vectors.append(arrays[key])
        sizes = np.fromiter(map(attrgetter("size"), vectors), np.int64, len(vectors))
        starts = np.concatenate(([0], np.cumsum(sizes))).tolist()
        flat = np.concatenate([np.ravel(v) for v in vectors], dtype=np.float64) if vectors else np.zeros(0)
    not_finite = []
    if not np.isfinite(flat).all():
        bad = np.concatenate(([0], np.cumsum(~np.isfinite(flat))))[starts]
        not_finite = [f"{names[i]} ({int(bad[i + 1] - bad[i])} of {sizes[i]})"
                      for i in np.flatnonzero(np.diff(bad)).tolist()]
    gammas = {name: flat[a:b] for name, a, b in zip(names, starts, starts[1:])}
    unknown = _unknown_layers(graph, shapes)
    problems = []
    if not_finite:
        problems.append(f"NaN or infinite bn scales in {len(not_finite)} layers (e.g. "
                        f"{', '.join(not_finite[:3])})")
    if missing:
        problems.append(f"{len(missing)} of {len(bns)} bn scales missing (e.g. {', '.join(missing[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} with wrong shapes (e.g. {'; '.join(wrong[:2])})")
    if unknown:
        problems.append(f"{len(unknown)} layers the model does not have (e.g. "
                        f"{', '.join(heapq.nsmallest(3, unknown))})")
    if problems:
        raise CheckpointMismatchError(f"{source}: does not fit {graph.name}: {'; '.join(problems)}")
    return LearnedStructure(source, gammas=gammas, notes=notes)


def _gather_scales(tensors: CheckpointTensors, bns: list[tuple[str, dict[str, Any]]]):
    """The loop of :func:`_match_gammas` for PyTorch keys over :class:`FlatArrays`, in bulk:
    lookups with C-level ``map``, sizes and the gather with numpy; the same names, sizes,
    starts, float64 values, missing and wrong lists (in bn order)."""
    from operator import contains

    shapes, arrays = tensors.shapes, tensors.arrays
    attrs = list(map(itemgetter(1), bns))
    keys = list(map(itemgetter("gamma_key"), attrs))
    channels = np.fromiter(map(itemgetter("out_channels"), attrs), np.int64, len(attrs))
    at = np.fromiter(map(arrays.shapes.index.get, keys, itertools.repeat(-1)), np.int64, len(keys))
    present = at >= 0  # an array's key is a shape's too; only the others are looked up among the shapes
    absent = np.flatnonzero(~present).tolist()
    present[absent] = np.fromiter(map(contains, itertools.repeat(shapes), map(keys.__getitem__, absent)), bool,
                                  len(absent))
    bounds = arrays.starts
    size = np.where(at >= 0, bounds[at + 1] - bounds[np.maximum(at, 0)], -1)
    good = present & (at >= 0) & (size == channels)
    missing = [keys[i] for i in np.flatnonzero(~present).tolist()]
    wrong = [f"{keys[i]} has {math.prod(shapes[keys[i]])} values, the model has {int(channels[i])}"
             for i in np.flatnonzero(present & ~good).tolist()]
    chosen = np.flatnonzero(good)
    sizes = size[chosen]
    flat = arrays.flat[index_ranges(bounds[at[chosen]], sizes)].astype(np.float64)
    names = [bns[i][0] for i in chosen.tolist()]
    return names, sizes, np.concatenate(([0], np.cumsum(sizes))).tolist(), flat, missing, wrong


def match_alive_counts(graph: ChannelGraph, counts: dict[str, int], source: str) -> LearnedStructure:
    """Match a morph-net alive file's op names (``conv1/Conv2D``) to the graph's source ops."""
    sources = {n for n, a in graph.ops() if a["kind"] in (Kind.CONV, Kind.LINEAR)}
    matched, unknown = {}, []
    for op_name, count in counts.items():
        name = _TF_OP_SUFFIX.sub("", op_name)
        if name in sources:
            out = graph[name]["out_channels"]
            if count > out:
                raise CheckpointMismatchError(f"{source}: {op_name} has {count} alive channels, "
                                              f"the model's {name} has only {out}")
            matched[name] = count
        else:
            unknown.append(op_name)
    if not matched:
        raise CheckpointMismatchError(f"{source}: no op name matches {graph.name} (e.g. "
                                      f"{', '.join(list(counts)[:3])})")
    notes = (f"{len(unknown)} names not in the model, ignored: {', '.join(unknown[:5])}",) if unknown else ()
    return LearnedStructure(source, alive_counts=matched, notes=notes)
