"""Cached loaders: parsed graphs and compiled width models by content, never mutated."""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

import streamlit as st

MAX_UPLOAD_BYTES = 1 * 2**30


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name) or "upload"


def _as_file(name: str, data: bytes) -> Path:
    """Write an upload to a private temp file keeping its name (the suffix picks the reader)."""
    from morphscope.errors import UnsupportedFileError

    if len(data) > MAX_UPLOAD_BYTES:
        raise UnsupportedFileError(f"{name}: {len(data)} bytes, over the {MAX_UPLOAD_BYTES} byte limit")
    folder = Path(tempfile.mkdtemp(prefix="morphscope_"))
    path = folder / _safe_name(name)
    path.write_bytes(data)
    return path


@st.cache_resource(max_entries=8, show_spinner=False)
def model_from_spec(spec: str, side: int | None = None) -> tuple[Any, Any]:
    """``(graph, width model)`` for a zoo or bundled spec."""
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.load import load_model

    graph = load_model(spec, (3, side, side) if side else None)
    return graph, compile_width_model(graph)


@st.cache_resource(max_entries=8, show_spinner=False)
def model_from_upload(name: str, data: bytes) -> tuple[Any, Any, str]:
    """``(graph, width model, saved path)`` for uploaded bytes; the cache key is the content."""
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.load import load_model

    path = _as_file(name, data)
    graph = load_model(str(path))
    graph.name = name
    return graph, compile_width_model(graph), str(path)


@st.cache_data(max_entries=32, show_spinner=False)
def structure_from_bytes(_graph: Any, graph_key: str, name: str, data: bytes) -> dict[str, Any]:
    """A checkpoint's gammas or alive counts, matched to the graph (plain data)."""
    from morphscope.importers.checkpoints import load_structure

    structure = load_structure(_graph, _as_file(name, data))
    return {"gammas": structure.gammas, "alive_counts": structure.alive_counts,
            "notes": list(structure.notes)}


def content_key(data: bytes) -> str:
    """A short hash naming uploaded content."""
    return hashlib.sha256(data).hexdigest()[:16]


@st.cache_resource(max_entries=4, show_spinner=False)
def framework_model(spec: str, side: int | None = None) -> Any:
    """The framework's model object (to rebuild with new widths) for a spec."""
    from morphscope.importers.load import load_framework_model

    return load_framework_model(spec, (3, side, side) if side else None)
