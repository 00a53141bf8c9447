"""Cached loaders: parsed graphs and compiled width models by content, never mutated.

Uploads are untrusted: each is written to a private temporary folder only while the isolated
worker parses it (:mod:`morphscope.importers.isolation`), then removed. No server path is made
from an upload's name: the file is called ``upload`` plus the name's suffix (what picks the
reader), and the user's name is kept for messages only. Outcomes are cached by
content, failures included, so a bad file that stays listed is parsed once, not on every
rerun, and its one-line error names it by the user's own name.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

import streamlit as st

import morphscope.errors as errors
from morphscope.errors import MorphScopeError, UnsupportedFileError

MAX_UPLOAD_BYTES = 1 * 2**30
TRUSTED_PREFIXES = ("torchvision:", "keras:", "example:")  # built in-process; everything else is a file
UPLOAD_SPEC_PREFIX = "upload:"  # rebuild spec of an uploaded Keras model: upload:<content key>
MAX_KEPT_UPLOADS = 8  # uploaded Keras models kept in memory to rebuild from
_KEPT_UPLOADS: "OrderedDict[str, tuple[str, bytes]]" = OrderedDict()  # content key -> (name, bytes)


_SERVER_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}")  # .pt2, .safetensors, .h5: what picks the reader
_ALIVE_FILE = re.compile(r"alive_[0-9]+")  # a morph-net alive file, read by its name alone


def server_file_name(name: str) -> str:
    """The fixed name an upload gets on the server: ``alive_0`` for a morph-net alive file,
    else ``upload`` plus the name's suffix when it is short and plain; nothing else of the
    user's name (its length, folders, characters) reaches a path.

    Examples
    --------
    >>> server_file_name("../../my model.PT2"), server_file_name("alive_1200"), server_file_name("x" * 300)
    ('upload.PT2', 'alive_0', 'upload')
    """
    base = re.split(r"[\\/]", name)[-1]
    if _ALIVE_FILE.fullmatch(base):
        return "alive_0"
    suffix = base[base.rfind("."):] if "." in base else ""
    return "upload" + (suffix if _SERVER_SUFFIX.fullmatch(suffix) else "")


@contextlib.contextmanager
def upload_file(name: str, data: bytes) -> Iterator[Path]:
    """An upload as a private temporary file named by :func:`server_file_name` (the suffix
    picks the reader), removed with its folder on exit.

    Raises
    ------
    UnsupportedFileError
        If the upload is larger than ``MAX_UPLOAD_BYTES``.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        from morphscope.units import human_bytes

        raise UnsupportedFileError(f"{name}: {human_bytes(len(data))}, over the "
                                   f"{human_bytes(MAX_UPLOAD_BYTES)} upload limit")
    folder = Path(tempfile.mkdtemp(prefix="morphscope_upload_"))
    try:
        path = folder / server_file_name(name)
        path.write_bytes(data)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _outcome(parse: Callable[[], Any]) -> tuple[Any, tuple[str, str] | None]:
    """``(result, None)``, or ``(None, (error class name, message))`` for a MorphScopeError:
    failures are plain data, so the caches keep them like successes."""
    try:
        return parse(), None
    except MorphScopeError as err:
        return None, (type(err).__name__, str(err))


def _raise_failure(failure: tuple[str, str] | None) -> None:
    if failure is not None:
        cls, message = failure
        raise getattr(errors, cls, MorphScopeError)(message)


@st.cache_resource(max_entries=8, show_spinner=False)
def _model_from_spec(spec: str, side: int | None) -> tuple[Any, tuple[str, str] | None]:
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.load import load_model

    def parse():
        if not spec.startswith(TRUSTED_PREFIXES):
            raise UnsupportedFileError(f"{spec}: name a model as torchvision:NAME, keras:NAME or "
                                       "example:NAME; files are uploaded")
        graph = load_model(spec, (3, side, side) if side else None)
        return graph, compile_width_model(graph)

    return _outcome(parse)


def model_from_spec(spec: str, side: int | None = None) -> tuple[Any, Any]:
    """``(graph, width model)`` for a zoo or bundled spec (never a path)."""
    result, failure = _model_from_spec(spec, side)
    _raise_failure(failure)
    return result


@st.cache_resource(max_entries=8, show_spinner=False)
def scoped_model(_graph: Any, graph_key: str, convention: str, prune_outputs: str,
                 output_boundary: str) -> Any:
    """The width model of an already parsed graph counted by ``convention``, with the outputs
    rule and the output boundary (empty: the model outputs) of the user's choice.

    Raises
    ------
    MorphScopeError
        For an unknown boundary op (one line, naming it).
    """
    from morphscope.analyzers.conventions import Scope
    from morphscope.analyzers.widths import compile_width_model

    boundary = (output_boundary,) if output_boundary else ()
    return compile_width_model(_graph, convention, Scope(prune_outputs, outputs=boundary))


@st.cache_resource(max_entries=8, show_spinner=False)
def _model_from_upload(name: str, data: bytes) -> tuple[Any, tuple[str, str] | None]:
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.load import load_model

    def parse():
        with upload_file(name, data) as path:
            graph = load_model(str(path), name=name)
        return graph, compile_width_model(graph)

    return _outcome(parse)


def model_from_upload(name: str, data: bytes) -> tuple[Any, Any, str]:
    """``(graph, width model, rebuild spec)`` for uploaded bytes, parsed once per content (a
    failure too). The rebuild spec, ``upload:<content key>``, lets :func:`framework_model`
    rebuild an uploaded Keras model from the bytes kept in memory; no file stays behind.

    Raises
    ------
    MorphScopeError
        The parse's one-line error, naming the upload by ``name``.
    """
    result, failure = _model_from_upload(name, data)
    _raise_failure(failure)
    key = content_key(data)
    _KEPT_UPLOADS[key] = (name, data)
    _KEPT_UPLOADS.move_to_end(key)
    while len(_KEPT_UPLOADS) > MAX_KEPT_UPLOADS:
        _KEPT_UPLOADS.popitem(last=False)
    return (*result, UPLOAD_SPEC_PREFIX + key)


@st.cache_data(max_entries=32, show_spinner=False)
def _structure_from_bytes(_graph: Any, graph_key: str, name: str, data: bytes) -> tuple[Any, tuple[str, str] | None]:
    from morphscope.importers.checkpoints import load_structure

    def parse():
        with upload_file(name, data) as path:
            structure = load_structure(_graph, path, name=name)
        return {"gammas": structure.gammas, "alive_counts": structure.alive_counts,
                "kernels": structure.kernels, "notes": list(structure.notes)}

    return _outcome(parse)


def structure_from_bytes(_graph: Any, graph_key: str, name: str, data: bytes) -> dict[str, Any]:
    """A checkpoint's gammas (or group-lasso kernels) or alive counts, matched to the graph
    (plain data); parsed once per graph and content, a failure too.

    Raises
    ------
    MorphScopeError
        The parse's one-line error, naming the upload by ``name``.
    """
    result, failure = _structure_from_bytes(_graph, graph_key, name, data)
    _raise_failure(failure)
    return result


def content_key(data: bytes) -> str:
    """A short hash naming uploaded content."""
    return hashlib.sha256(data).hexdigest()[:16]


@st.cache_resource(max_entries=4, show_spinner=False)
def framework_model(spec: str, side: int | None = None) -> Any:
    """The framework's model object (to rebuild with new widths) for a zoo spec or an
    ``upload:<content key>`` spec from :func:`model_from_upload` (an uploaded ``.pt2``: its
    bytes as a :class:`~morphscope.importers.objects.Pt2Archive`, rewritten, never loaded).

    Raises
    ------
    UnsupportedFileError
        For an upload no longer kept (upload it again) or a spec that is neither.
    """
    from morphscope.importers.load import load_framework_model
    from morphscope.importers.objects import Pt2Archive

    if spec.startswith(UPLOAD_SPEC_PREFIX):
        kept = _KEPT_UPLOADS.get(spec[len(UPLOAD_SPEC_PREFIX):])
        if kept is None:
            raise UnsupportedFileError("the uploaded model is no longer in memory; upload it again")
        name, data = kept
        if name.lower().endswith(".pt2"):  # rewritten as an archive, never loaded
            return Pt2Archive(name, data)
        with upload_file(name, data) as path:
            return load_framework_model(str(path), name=name)
    if not spec.startswith(TRUSTED_PREFIXES):
        raise UnsupportedFileError(f"{spec}: name a model as torchvision:NAME, keras:NAME or example:NAME")
    return load_framework_model(spec, (3, side, side) if side else None)


@st.cache_data(max_entries=16, show_spinner=False)
def runs_from_uploads(files: tuple[tuple[str, bytes], ...]) -> list[Any]:
    """Training runs (alive files and cost logs) from uploaded ``(name, bytes)`` pairs."""
    from morphscope.importers.runs import runs_from_uploads as read_runs

    return read_runs(list(files))


@st.cache_data(max_entries=16, show_spinner=False)
def run_steps(_graph: Any, _model: Any, graph_key: str, _run: Any, run_key: str) -> dict[str, Any]:
    """A run matched to the graph: per step the alive counts by graph op name, the widths
    (steps x spaces) and every layer's share of the seed's width (computed for every step)."""
    from morphscope.analyzers.runs import layer_shares, widths_per_step
    from morphscope.importers.runs import match_run

    counts = match_run(_graph, _run)
    widths = widths_per_step(_model, counts)
    return {"counts": counts, "widths": widths, **layer_shares(_graph, _model, widths)}
