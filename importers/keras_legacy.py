"""Model files written by tf_keras 2.x (the Keras morph-net's users have), made loadable by Keras 3.

Keras 3 refuses two things tf_keras 2.x writes into a model's config:

- ``dtype`` inside an initializer's config (``{"class_name": "GlorotUniform", "config":
  {"seed": null, "dtype": "float32"}}``): Keras 3 initializers take no ``dtype`` argument;
- ``groups`` in a ``DepthwiseConv2D`` config (tf_keras inherits it from ``Conv2D``; it is
  always 1 there): Keras 3's ``DepthwiseConv2D`` takes no ``groups`` argument.

:func:`normalized_keras_file` rewrites only those keys, as JSON, in a temporary copy of the
file (``model_config`` attribute of an ``.h5``, ``config.json`` of a ``.keras`` zip) and yields
the path to load. Nothing is deserialized here; the copy is then loaded by Keras' own loader
with ``safe_mode=True`` like any other file.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

from morphscope.errors import UnsupportedFileError

# Layer classes whose config must not carry ``groups`` in Keras 3.
NO_GROUPS_LAYERS = frozenset({"DepthwiseConv1D", "DepthwiseConv2D"})
MAX_CONFIG_BYTES = 64 * 2**20  # a .keras config.json declared larger is refused unread


def normalize_config(config: Any) -> tuple[Any, list[str]]:
    """A copy of a Keras model config with the tf_keras 2.x keys Keras 3 rejects removed.

    Parameters
    ----------
    config : JSON-like (dicts, lists, scalars)
        A model config as stored in the file (``model_config`` / ``config.json``).

    Returns
    -------
    (config, changes) : the normalized copy and one line per change made (empty: untouched).

    Raises
    ------
    UnsupportedFileError
        If a ``DepthwiseConv2D`` config has ``groups`` other than 1 (no Keras 3 equivalent).

    Examples
    --------
    >>> cfg = {"class_name": "DepthwiseConv2D", "config": {"name": "dw", "groups": 1,
    ...        "depthwise_initializer": {"class_name": "Ones", "config": {"dtype": "float32"}}}}
    >>> fixed, changes = normalize_config(cfg)
    >>> fixed["config"]
    {'name': 'dw', 'depthwise_initializer': {'class_name': 'Ones', 'config': {}}}
    >>> changes
    ['dw: groups=1 dropped (DepthwiseConv2D)', 'dw: dtype dropped from depthwise_initializer']
    """
    changes: list[str] = []
    return _normalize(config, "", changes), changes


def _normalize(node: Any, layer: str, changes: list[str]) -> Any:
    if isinstance(node, list):
        return [_normalize(item, layer, changes) for item in node]
    if not isinstance(node, dict):
        return node
    out = dict(node)
    inner = out.get("config")
    if isinstance(inner, dict):
        inner = dict(inner)
        layer = str(inner.get("name", layer))
        if out.get("class_name") in NO_GROUPS_LAYERS and "groups" in inner:
            groups = inner.pop("groups")
            if groups not in (1, None):
                raise UnsupportedFileError(f"{layer}: DepthwiseConv2D with groups={groups}; "
                                           "Keras 3 supports groups=1 only")
            changes.append(f"{layer}: groups={groups} dropped ({out['class_name']})")
        for key, value in inner.items():
            if key.endswith("_initializer") and isinstance(value, dict) \
                    and isinstance(value.get("config"), dict) and "dtype" in value["config"]:
                value = {**value, "config": {k: v for k, v in value["config"].items() if k != "dtype"}}
                inner[key] = value
                changes.append(f"{layer}: dtype dropped from {key}")
        out["config"] = inner
    return {key: _normalize(value, layer, changes) for key, value in out.items()}


@contextlib.contextmanager
def normalized_keras_file(path: str | Path) -> Iterator[tuple[Path, list[str]]]:
    """Yield ``(path to load, changes)``: ``path`` itself when its config needs nothing, else
    a temporary normalized copy (removed on exit).

    Raises
    ------
    UnsupportedFileError
        If the config is not JSON, or cannot be normalized (see :func:`normalize_config`).
    """
    path = Path(path)
    reader = _read_h5_config if path.suffix.lower() in (".h5", ".hdf5") else _read_zip_config
    text = reader(path)
    if text is None:
        yield path, []
        return
    try:
        config = json.loads(text)
    except ValueError as err:
        raise UnsupportedFileError(f"{path}: the model config is not JSON ({err})") from err
    fixed, changes = normalize_config(config)
    if not changes:
        yield path, []
        return
    with tempfile.TemporaryDirectory(prefix="morphscope-legacy-") as tmp:
        copy = Path(tmp) / path.name
        writer = _write_h5_config if reader is _read_h5_config else _write_zip_config
        writer(path, copy, json.dumps(fixed))
        yield copy, changes


def _read_h5_config(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get("model_config")  # bounded by the file's own size check
    except OSError:
        return None  # not HDF5: Keras' loader reports it
    return text.decode() if isinstance(text, bytes) else text


def _write_h5_config(path: Path, copy: Path, text: str) -> None:
    import h5py

    shutil.copyfile(path, copy)
    with h5py.File(copy, "r+") as f:
        f.attrs["model_config"] = text


def _read_zip_config(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                raise UnsupportedFileError(f"{path}: config.json over {MAX_CONFIG_BYTES} bytes")
            return archive.read("config.json").decode()
    except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError):
        return None  # not a .keras archive: Keras' loader reports it


def _write_zip_config(path: Path, copy: Path, text: str) -> None:
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = text.encode() if item.filename == "config.json" else src.read(item)
            dst.writestr(item, data)
