"""What a notebook user has in hand, turned into what the analyzers read.

Models: a spec (file path, ``torchvision:NAME``, ``keras:NAME``, ``example:NAME``), a live
``torch.nn.Module`` (with an example input or an input shape), a built ``keras.Model``, a
regularizer (its own graph is reused) or a :class:`~morphscope.graph.ChannelGraph`.
Structures: a checkpoint or alive-file path, a state_dict (tensors or arrays), morph-net's
widths JSON as a dict (op name -> alive channels), a regularizer (its gammas now) or a
:class:`~morphscope.importers.checkpoints.LearnedStructure`.

Frameworks are recognised without importing them: an object is a torch module only if torch
is already imported and it is an ``nn.Module`` (likewise Keras).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from morphscope.errors import MorphScopeError
from morphscope.graph import ChannelGraph
from morphscope.importers.checkpoints import LearnedStructure, match_alive_counts, match_gammas, unwrap_keys
from morphscope.importers.limits import DEFAULT_LIMITS, Limits

def is_torch_module(obj: Any) -> bool:
    """``isinstance(obj, torch.nn.Module)``, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def is_keras_model(obj: Any) -> bool:
    """``isinstance(obj, keras.Model)``, without importing Keras."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.Model)


def is_regularizer(obj: Any) -> bool:
    """A MorphScope regularizer: it carries its graph and reads its structure."""
    return isinstance(getattr(obj, "graph", None), ChannelGraph) and callable(getattr(obj, "structure", None))


def graph_of(model: Any, example_input: Any = None, input_shape: tuple[int, ...] | None = None) -> ChannelGraph:
    """The channel graph of any model a user can hand over (see the module docstring).

    Parameters
    ----------
    example_input : torch.Tensor, optional
        One input batch for an ``nn.Module`` (its shape without the batch axis is captured).
    input_shape : tuple of int, optional
        Channels-first (C, H, W) for an ``nn.Module`` or a zoo name.

    Raises
    ------
    MorphScopeError
        One line: a module without an input shape, an object of no known kind, a spec
        without its prefix, or any import error (naming the model).
    """
    if isinstance(model, ChannelGraph):
        return model
    if is_regularizer(model):
        return model.graph
    if is_torch_module(model):
        from morphscope.importers.torch_importer import load_module

        if example_input is not None:
            input_shape = tuple(example_input.shape[1:])
        if input_shape is None:
            raise MorphScopeError(f"{type(model).__name__}: pass example_input (one input batch) or "
                                  "input_shape=(C, H, W) to capture the module")
        was_training = model.training
        graph = load_module(model, tuple(input_shape))  # captures in eval mode
        model.train(was_training)
        return graph
    if is_keras_model(model):
        from morphscope.importers.keras_importer import load_keras_model

        return load_keras_model(model)
    if isinstance(model, (str, Path)):
        from morphscope.importers.load import load_model

        return load_model(spec_of(model), input_shape)
    raise MorphScopeError(f"a {type(model).__name__} is not a model: pass a torch.nn.Module (with "
                          "example_input), a keras.Model, a file path, torchvision:NAME or keras:NAME")


def spec_of(model: str | Path) -> str:
    """A spec string; a bare zoo name that is no file gets the hint of its prefix."""
    spec = str(model)
    if ":" not in spec and not Path(spec).suffix and not Path(spec).exists():
        raise MorphScopeError(f"{spec}: no such file; name a zoo model as torchvision:{spec} or "
                              f"keras:{spec}")
    return spec


@dataclass(frozen=True)
class Pt2Archive:
    """A ``.pt2`` file's bytes, rebuilt by rewriting the archive itself (nothing in it runs)."""

    name: str  # the user's name for the file, for messages
    data: bytes


def is_pt2(model: Any) -> bool:
    """A ``.pt2`` program (a file spec or its :class:`Pt2Archive`): rebuilt by rewriting, so
    it keeps every op (a dead block stays at one channel instead of being removed)."""
    return isinstance(model, Pt2Archive) or (isinstance(model, (str, Path)) and str(model).lower().endswith(".pt2"))


def rebuild_source(model: Any, input_shape: tuple[int, ...] | None = None, name: str | None = None,
                   limits: Limits = DEFAULT_LIMITS) -> Any:
    """What a rebuild starts from: a live model as it is; a ``.pt2`` file's bytes
    (:class:`Pt2Archive`, size-checked); else the framework model of the spec
    (:func:`~morphscope.importers.load.load_framework_model`)."""
    if is_torch_module(model) or is_keras_model(model):
        return model
    from morphscope.importers.load import check_file, load_framework_model

    spec = spec_of(model)
    if is_pt2(spec):
        check_file(Path(spec), limits.max_file_bytes, name)
        return Pt2Archive(name or spec, Path(spec).read_bytes())
    return load_framework_model(spec, input_shape, limits, name)


def structure_of(graph: ChannelGraph, structure: Any, name: str | None = None) -> LearnedStructure:
    """A learned structure matched to ``graph``, from whatever holds one (module docstring).

    Raises
    ------
    CheckpointMismatchError
        If it does not fit the graph (missing or unknown layers, wrong sizes).
    MorphScopeError
        For an object that holds no structure.
    """
    if isinstance(structure, LearnedStructure):
        return structure
    if is_regularizer(structure):
        return structure.structure()
    if isinstance(structure, (str, Path)):
        from morphscope.importers.checkpoints import load_structure

        return load_structure(graph, structure, name)
    if isinstance(structure, Mapping):
        source = name or "state_dict"
        values = list(structure.values())
        if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            return match_alive_counts(graph, {str(k): int(v) for k, v in structure.items()}, name or "widths")
        keys, _ = unwrap_keys([str(k) for k in structure])
        return match_gammas(graph, {k: _array(v) for k, v in zip(keys, values)
                                    if _is_floating(v)}, source)
    raise MorphScopeError(f"a {type(structure).__name__} holds no structure: pass a checkpoint path, "
                          "a state_dict, a widths dict (op name -> channels) or a regularizer")


def _is_floating(value: Any) -> bool:
    """A floating point torch tensor or numpy array (bn scales; not counters or masks)."""
    if callable(getattr(value, "is_floating_point", None)):
        return bool(value.is_floating_point())
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


def _array(value: Any) -> np.ndarray:
    """A float64 numpy copy of a tensor or array."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
