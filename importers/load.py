"""One entry point from a model spec (a path, ``torchvision:NAME`` or ``keras:NAME``) to a graph.

Uploaded files are untrusted: sizes are bounded, pickles are read with
``torch.load(weights_only=True)`` only, ``.pt2`` archives are parsed as JSON, Keras files are
loaded with ``safe_mode=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from morphscope.errors import UnsafeFileError, UnsupportedFileError
from morphscope.graph import ChannelGraph
from morphscope.importers.limits import DEFAULT_LIMITS, Limits, describe_error, loads_json, open_zip
from morphscope.units import human_bytes

MAX_MODEL_FILE_BYTES = DEFAULT_LIMITS.max_file_bytes
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
# Bundled examples: the explorer's default. example:digits is made by examples/train_digits.py.
EXAMPLES = {"digits": {"model": "digits/seed.pt2", "script": "train_digits.py",
                       "checkpoints": {"FLOPs-regularized": "digits/flops_gammas.pt",
                                       "size-regularized": "digits/size_gammas.pt"}}}
MODEL_SUFFIXES = (".pt2", ".keras", ".h5", ".hdf5", ".json")


def check_file(path: Path, max_bytes: int = MAX_MODEL_FILE_BYTES, name: str | None = None) -> None:
    """Raise a one-line error (naming the file as ``name``) if ``path`` is missing, not a
    file, empty or too large."""
    name = name or str(path)
    if not path.exists():
        raise UnsupportedFileError(f"{name}: no such file")
    if not path.is_file():
        raise UnsupportedFileError(f"{name}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise UnsupportedFileError(f"{name}: empty file")
    if size > max_bytes:
        raise UnsupportedFileError(f"{name}: {human_bytes(size)}, over the {human_bytes(max_bytes)} "
                                   "file size limit")


def model_suffix(path: Path, name: str) -> str:
    """The model file type of ``path`` (``.pt2``, ``.keras``, ...), or a one-line refusal."""
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES + (".pt", ".pth", ".bin"):
        raise UnsupportedFileError(f"{name}: unknown model file type {suffix or '(none)'!r}; choose "
                                   f"from {', '.join(MODEL_SUFFIXES)}, torchvision:NAME, keras:NAME")
    return suffix


def load_model(spec: str, input_shape: tuple[int, ...] | None = None, limits: Limits = DEFAULT_LIMITS,
               isolate: bool = True, name: str | None = None) -> ChannelGraph:
    """Import a model from a spec.

    Parameters
    ----------
    spec : str
        ``torchvision:NAME``, ``keras:NAME``, ``example:NAME`` (built in-process: they are
        ours), or a path to a ``.pt2`` (torch.export.save), ``.keras``/``.h5`` (Keras) or
        ``.json`` (a saved ChannelGraph) file.
    input_shape : tuple of int, optional
        Channels-first (C, H, W) input for zoo models; files carry their own.
    limits : Limits
        What parsing a file may use (memory, CPU time, declared sizes).
    isolate : bool
        Parse a file in a limited child process (default); False parses in this process,
        with the declared-size checks but without the operating-system limits.
    name : str, optional
        The user's name for the file (an upload's own name), used in messages.

    Raises
    ------
    UnsupportedFileError, UnsafeFileError, GraphError
        With a one-line message naming the file and the problem.
    """
    from morphscope.importers.frameworks import require_framework

    require_framework(_example(spec)["model"] if spec.startswith("example:") else spec, name or spec)
    if spec.startswith("torchvision:"):
        from morphscope.importers.torch_importer import load_torchvision

        side = input_shape[-1] if input_shape else None
        return load_torchvision(spec.split(":", 1)[1], side)
    if spec.startswith("keras:"):
        from morphscope.importers.keras_importer import load_keras_application

        return load_keras_application(spec.split(":", 1)[1], input_shape)
    if spec.startswith("example:"):
        from morphscope.importers.torch_importer import load_pt2

        graph = load_pt2(EXAMPLES_DIR / _example(spec)["model"])
        graph.name = spec
        return graph
    if isolate:
        from morphscope.importers.isolation import parse_model_isolated

        return parse_model_isolated(spec, name, limits)
    return load_model_file(Path(spec), name or spec, limits)


def load_model_file(path: Path, name: str, limits: Limits = DEFAULT_LIMITS) -> ChannelGraph:
    """Parse a model file in this process (the isolated worker runs this), declared sizes
    checked first; see :func:`load_model`."""
    check_file(path, limits.max_file_bytes, name)
    suffix = model_suffix(path, name)
    if suffix == ".pt2":
        from morphscope.importers.torch_importer import load_pt2

        graph = load_pt2(path)
    elif suffix in (".keras", ".h5", ".hdf5"):
        from morphscope.importers.keras_guard import check_keras_file
        from morphscope.importers.keras_importer import load_keras_file

        check_keras_file(path, name, limits)
        graph = load_keras_file(path)
    elif suffix == ".json":
        graph = _load_graph_json(path, name, limits)
    else:
        read_torch_pickle(path, name, limits)  # refuses code payloads with UnsafeFileError
        raise UnsupportedFileError(f"{name}: a PyTorch pickle holds weights, not a graph; save the "
                                   "model with torch.export.save (.pt2) or name it torchvision:NAME, "
                                   "and pass this file as --checkpoint")
    graph.name = name
    return graph


def _example(spec: str) -> dict[str, Any]:
    name = spec.split(":", 1)[1]
    if name not in EXAMPLES:
        raise UnsupportedFileError(f"{spec}: no such bundled example; choose from {sorted(EXAMPLES)}")
    return EXAMPLES[name]


def example_checkpoints(spec: str) -> dict[str, Path]:
    """Label -> checkpoint path of a bundled example."""
    return {label: EXAMPLES_DIR / rel for label, rel in _example(spec)["checkpoints"].items()}


def _load_graph_json(path: Path, name: str, limits: Limits) -> ChannelGraph:
    return ChannelGraph.from_doc(loads_json(path.read_bytes(), name, limits, "graph JSON"), name)


def read_torch_pickle(path: Path, name: str | None = None, limits: Limits = DEFAULT_LIMITS) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, no code.

    Raises
    ------
    UnsafeFileError
        If the pickle references anything but tensors and plain data (it would run code).
    UnsupportedFileError
        If the file is not a readable PyTorch file, or its zip members are oversized.
    """
    import pickle
    import warnings
    import zipfile

    import torch

    name = name or str(path)
    if zipfile.is_zipfile(path):
        open_zip(path, name, limits).close()  # bombs and member names, before torch reads them
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notices; the outcome is what matters
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        imports = _pickle_imports(path)
        if imports:
            raise UnsafeFileError(f"{name}: refused, the pickle would run code (it imports "
                                  f"{', '.join(imports[:3])}); only tensors and plain "
                                  "containers are loaded") from err
        if "unsupported global" in str(err).lower():  # a well-formed pickle of other objects
            raise UnsupportedFileError(f"{name}: refused, the pickle holds more than tensors and "
                                       "plain containers (torch.load weights_only=True rejects it)") from err
        raise UnsupportedFileError(_unreadable(name, err)) from err
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises many types on corrupt files
        raise UnsupportedFileError(_unreadable(name, err)) from err


def _unreadable(name: str, err: BaseException) -> str:
    """One line for bytes torch cannot read: what the file is not, and the error's type only
    (torch's own text runs to paragraphs and advises ``weights_only=False``, unsafe here)."""
    return (f"{name}: not a readable PyTorch file: neither a torch.save archive nor a pickle of "
            f"tensors and plain containers ({type(err).__name__})")


_SAFE_PICKLE_MODULES = ("torch", "collections", "builtins", "_codecs", "numpy")


def _pickle_imports(path: Path) -> list[str]:
    """Callables a pickle would import outside torch/collections/builtins, read with
    pickletools (opcodes only, nothing is executed); [] if the bytes cannot be parsed."""
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            blobs = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    else:
        blobs = [path.read_bytes()]
    found: list[str] = []
    for blob in blobs:
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(blob):
                if isinstance(arg, str):
                    strings.append(arg)
                if opcode.name == "GLOBAL":
                    found.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except (ValueError, EOFError):  # not a pickle stream: nothing to name
            continue
    return [g for g in dict.fromkeys(found) if not g.startswith(_SAFE_PICKLE_MODULES)]


def load_framework_model(spec: str, input_shape: tuple[int, ...] | None = None,
                         limits: Limits = DEFAULT_LIMITS, name: str | None = None) -> Any:
    """The framework's own model object for a spec, to rebuild with new widths: a CPU
    ``nn.Module`` (torchvision, random weights) or a ``keras.Model``. A Keras file is loaded
    in this process (the rebuild needs the live model), after :func:`check_keras_file`'s
    declared-size and HDF5 checks, with ``safe_mode=True``.

    Raises
    ------
    UnsupportedFileError
        For ``.pt2`` and graph ``.json`` files: they hold no rebuildable model.
    """
    if spec.startswith("torchvision:"):
        from morphscope.importers.frameworks import import_torchvision
        from morphscope.importers.torch_importer import build_torchvision

        torchvision = import_torchvision(spec)
        build_torchvision(spec.split(":", 1)[1])  # validates the name
        return torchvision.models.get_model(spec.split(":", 1)[1], weights=None).eval()
    if spec.startswith("keras:"):
        from morphscope.importers.keras_importer import build_keras_application

        return build_keras_application(spec.split(":", 1)[1], input_shape)
    if spec.startswith("example:"):
        import importlib.util

        script = EXAMPLES_DIR / _example(spec)["script"]
        module_spec = importlib.util.spec_from_file_location(f"morphscope_{script.stem}", script)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)  # our own example code, not an upload
        return module.SeedNet().eval()
    path = Path(spec)
    check_file(path, limits.max_file_bytes, name)
    if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
        from morphscope.importers.keras_guard import check_keras_file
        from morphscope.importers.keras_importer import load_keras_file_model

        check_keras_file(path, name, limits)  # Keras reads this HDF5 too: guard it first
        return load_keras_file_model(path)
    raise UnsupportedFileError(f"{path}: a rebuilt model needs the model itself; use "
                               "torchvision:NAME, keras:NAME or a .keras/.h5 file")
