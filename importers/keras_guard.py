"""Keras model files from users, checked before Keras builds anything.

``keras.saving.load_model`` builds every layer with real weights before it reads a byte of
them, so a 1 MB ``.keras`` file declaring ``Flatten(1000x1000x3) -> Dense(1000)`` asks for 12 GB.
:func:`check_keras_file` reads the archive's ``config.json`` (or a legacy ``.h5``'s
``model_config`` attribute) itself, with the zip, JSON and HDF5 checks of
:mod:`~morphscope.importers.limits` and :mod:`~morphscope.importers.h5safe`, and adds up the
parameters the config declares from each layer's ``build_config`` input shape.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from morphscope.errors import UnsupportedFileError
from morphscope.importers.h5safe import open_h5
from morphscope.importers.limits import DEFAULT_LIMITS, Limits, check_param_count, loads_json, open_zip, read_member


def _last_dim(config: Mapping[str, Any], channels_first: bool = False) -> int:
    shape = (config.get("build_config") or {}).get("input_shape") or []
    if shape and isinstance(shape[0], list):  # layers built on several inputs
        shape = shape[0]
    dim = shape[1 if channels_first else -1] if len(shape) > 1 else None
    return dim if isinstance(dim, int) and dim > 0 else 0


def _dense_params(config: Mapping[str, Any]) -> int:
    units = int(config["config"].get("units") or 0)
    return _last_dim(config) * units + units


def _conv_params(config: Mapping[str, Any]) -> int:
    inner = config["config"]
    kernel = inner.get("kernel_size") or [1]
    kernel = kernel if isinstance(kernel, list) else [kernel]
    filters = int(inner.get("filters") or 0)
    channels = _last_dim(config, inner.get("data_format") == "channels_first")
    groups = max(int(inner.get("groups") or 1), 1)
    return math.prod(int(k) for k in kernel) * (channels // groups) * filters + filters


def _depthwise_params(config: Mapping[str, Any]) -> int:
    inner = config["config"]
    kernel = inner.get("kernel_size") or [1]
    kernel = kernel if isinstance(kernel, list) else [kernel]
    channels = _last_dim(config, inner.get("data_format") == "channels_first")
    return math.prod(int(k) for k in kernel) * channels * int(inner.get("depth_multiplier") or 1)


def _embedding_params(config: Mapping[str, Any]) -> int:
    return int(config["config"].get("input_dim") or 0) * int(config["config"].get("output_dim") or 0)


# Layers whose weights a config alone sizes; any other layer counts 0 (the worker's memory
# limit still bounds it).
DECLARED_PARAMS: Mapping[str, Callable[[Mapping[str, Any]], int]] = {
    "Dense": _dense_params,
    **dict.fromkeys(("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
                     "Conv3DTranspose"), _conv_params),
    **dict.fromkeys(("DepthwiseConv1D", "DepthwiseConv2D"), _depthwise_params),
    "Embedding": _embedding_params,
}


def _layer_configs(doc: Any) -> Iterator[Mapping[str, Any]]:
    """Every ``{"class_name": ..., "config": {...}}`` in a config document, without recursion."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("class_name"), str) and isinstance(item.get("config"), dict):
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def declared_params(doc: Any) -> int:
    """Parameters a Keras model config declares, from each sized layer's build input shape.

    Examples
    --------
    >>> declared_params({"class_name": "Dense", "config": {"units": 1000},
    ...                  "build_config": {"input_shape": [None, 3000000]}})
    3000001000
    """
    total = 0
    for layer in _layer_configs(doc):
        rule = DECLARED_PARAMS.get(layer["class_name"])
        if rule is not None:
            try:
                total += rule(layer)
            except (TypeError, ValueError):
                continue  # malformed numbers: Keras itself refuses them
    return total


def check_keras_file(path: str | Path, name: str | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
    """Check a ``.keras`` / ``.h5`` model file before ``keras.saving.load_model`` reads it.

    Raises
    ------
    UnsupportedFileError, UnsafeFileError
        A zip bomb or path outside the archive, deep or oversized JSON, an HDF5 file that
        points outside itself, or a config declaring more than ``limits.max_params``.
    """
    path = Path(path)
    name = name or str(path)
    if path.suffix.lower() == ".keras":
        with open_zip(path, name, limits) as archive:
            config = loads_json(read_member(archive, "config.json", name, limits.max_json_bytes),
                                name, limits, "Keras config")
            if "model.weights.h5" in archive.namelist():
                import io

                weights = read_member(archive, "model.weights.h5", name, limits.max_unzipped_bytes)
                open_h5(io.BytesIO(weights), name, limits).close()
    else:
        with open_h5(path, name, limits) as h5file:
            text = h5file.attrs.get("model_config")
            if text is None:
                raise UnsupportedFileError(f"{name}: an HDF5 file without a model config (weights "
                                           "only?); pass it as --checkpoint, or save the model itself")
            config = loads_json(text.encode() if isinstance(text, str) else bytes(text), name,
                                limits, "Keras config")
    check_param_count(name, declared_params(config), limits)
