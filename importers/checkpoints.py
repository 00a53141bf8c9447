"""Trained gammas (or a learned structure) from a file, matched to a graph's bn ops.

Formats: PyTorch state_dicts (``.pt``/``.pth``, read with ``weights_only=True``) and
``.safetensors``; Keras ``.keras``, ``.weights.h5`` and legacy ``.h5`` (read with h5py as
plain arrays: nothing is deserialized as code); morph-net StructureExporter files
(``learned_structure/alive_<step>``, JSON from op name to alive count) and our own
``.json`` of the same form.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from morphscope.importers.load import check_file, read_torch_pickle
from morphscope.errors import CheckpointMismatchError, UnsupportedFileError
from morphscope.graph import ChannelGraph, Kind

MAX_CHECKPOINT_BYTES = 2 * 2**30
MAX_ALIVE_JSON_BYTES = 64 * 2**20
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


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every array in a checkpoint file by key (PyTorch, safetensors or Keras h5/zip).

    Raises
    ------
    UnsupportedFileError, UnsafeFileError
        For missing, empty, oversized, corrupt or code-carrying files.
    """
    path = Path(path)
    check_file(path, MAX_CHECKPOINT_BYTES)
    name = path.name.lower()
    if name.endswith((".pt", ".pth", ".bin", ".ckpt")):
        return _torch_tensors(path, read_torch_pickle(path))
    if name.endswith(".safetensors"):
        return _safetensors(path)
    if name.endswith(".keras"):
        return _keras_zip(path)
    if name.endswith((".h5", ".hdf5")):
        return _h5_tensors(path, path)
    raise UnsupportedFileError(f"{path}: unknown checkpoint type; choose from .pt, .pth, "
                               ".safetensors, .keras, .weights.h5, .h5, or a morph-net alive JSON")


def _torch_tensors(path: Path, obj: Any) -> dict[str, np.ndarray]:
    import torch

    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise UnsupportedFileError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    tensors = {k.removeprefix("module."): v.detach().float().numpy()
               for k, v in obj.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if not tensors:
        raise UnsupportedFileError(f"{path}: the state_dict holds no floating point tensors")
    return tensors


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return {k.removeprefix("module."): v for k, v in load_file(path).items()}
    except (SafetensorError, ValueError, OSError) as err:
        raise UnsupportedFileError(f"{path}: not a readable safetensors file ({err})") from err


def _keras_zip(path: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as err:
        raise UnsupportedFileError(f"{path}: not a readable .keras archive ({err})") from err
    return _h5_tensors(path, io.BytesIO(data))


def _h5_tensors(path: Path, source: Any) -> dict[str, np.ndarray]:
    """Keras 3 files: ``layers/<x>/vars/<i>`` groups named by a ``name`` attribute
    (-> ``<layer>/vars/<i>``); legacy h5: ``model_weights/<layer>/<layer>/<var>``
    (-> ``<layer>/<var>``)."""
    import h5py

    tensors: dict[str, np.ndarray] = {}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or obj.ndim == 0:
            return
        parts = name.split("/")
        if "vars" in parts:  # Keras 3 format
            layer = obj.parent.attrs.get("name", parts[-3])
            tensors[f"{layer}/vars/{parts[-1]}"] = obj[()]
        else:  # legacy: .../<layer>/<layer>/<var>[:0]
            tensors[f"{parts[-2]}/{parts[-1].split(':')[0]}"] = obj[()]

    try:
        with h5py.File(source, "r") as f:
            f.visititems(visit)
    except (OSError, ValueError, KeyError) as err:
        raise UnsupportedFileError(f"{path}: not a readable HDF5 file ({err})") from err
    if not tensors:
        raise UnsupportedFileError(f"{path}: the HDF5 file holds no weights")
    return tensors


def read_alive_json(path: str | Path) -> dict[str, int]:
    """A morph-net StructureExporter file: a JSON object from op name to alive count."""
    path = Path(path)
    check_file(path, MAX_ALIVE_JSON_BYTES)
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UnsupportedFileError(f"{path}: not a JSON file ({err})") from err
    if not isinstance(doc, dict) or not all(isinstance(v, int) and v >= 0 for v in doc.values()):
        raise UnsupportedFileError(f"{path}: expected a JSON object from op name to alive count")
    return doc


def is_alive_json(path: str | Path) -> bool:
    """morph-net alive files have no extension (``alive_12000``); ours end in ``.json``."""
    path = Path(path)
    return path.suffix.lower() == ".json" or re.fullmatch(r"alive_\d+", path.name) is not None


def load_structure(graph: ChannelGraph, path: str | Path) -> LearnedStructure:
    """Read a checkpoint or alive file and match it to ``graph``.

    Raises
    ------
    CheckpointMismatchError
        If the file does not fit the model: missing or unknown keys, wrong shapes.
    """
    if is_alive_json(path):
        return match_alive_counts(graph, read_alive_json(path), str(path))
    return match_gammas(graph, read_tensors(path), str(path))


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
    keys = [k for _, a in graph.ops() for k in a.get("param_keys", ())]
    return {k.rsplit(".", 1)[0] for k in keys} | set(graph.detached_params)


def _prefix(graph: ChannelGraph, key: str) -> str:
    return key.split("/")[0] if graph.framework == "keras" else key.rsplit(".", 1)[0]


def match_gammas(graph: ChannelGraph, tensors: dict[str, np.ndarray], source: str) -> LearnedStructure:
    """Pick each bn op's scale vector out of ``tensors``; report everything that does not fit."""
    bns = [(n, a) for n, a in graph.ops() if a["kind"] == Kind.BN and a.get("gamma_key")]
    if not bns:
        raise CheckpointMismatchError(f"{source}: the model {graph.name} has no bn scales "
                                      "(gammas): nothing to regularize or prune")
    gammas, missing, wrong = {}, [], []
    for name, attrs in bns:
        key = next((k for k in _bn_lookup_keys(graph, attrs["gamma_key"]) if k in tensors), None)
        if key is None:
            missing.append(attrs["gamma_key"])
            continue
        vector = np.asarray(tensors[key], dtype=np.float64).reshape(-1)
        if vector.size != attrs["out_channels"]:
            wrong.append(f"{key} has {vector.size} values, the model has {attrs['out_channels']}")
            continue
        gammas[name] = vector
    known = _known_prefixes(graph)
    unknown = sorted({_prefix(graph, k) for k in tensors} - known)
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(bns)} bn scales missing (e.g. {', '.join(missing[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} with wrong shapes (e.g. {'; '.join(wrong[:2])})")
    if unknown:
        problems.append(f"{len(unknown)} layers the model does not have (e.g. {', '.join(unknown[:3])})")
    if problems:
        raise CheckpointMismatchError(f"{source}: does not fit {graph.name}: {'; '.join(problems)}")
    return LearnedStructure(source, gammas=gammas)


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
