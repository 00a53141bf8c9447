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

MAX_MODEL_FILE_BYTES = 4 * 2**30
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
# Bundled examples: the explorer's default. example:digits is made by examples/train_digits.py.
EXAMPLES = {"digits": {"model": "digits/seed.pt2", "script": "train_digits.py",
                       "checkpoints": {"FLOPs-regularized": "digits/flops_gammas.pt",
                                       "size-regularized": "digits/size_gammas.pt"},
                       "cost_logs": {"FLOPs-regularized": "digits/flops_structure/cost.jsonl",
                                     "size-regularized": "digits/size_structure/cost.jsonl"}}}
MODEL_SUFFIXES = (".pt2", ".keras", ".h5", ".hdf5", ".json")


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``"3,224,224"`` -> ``(3, 224, 224)``; None passes through.

    Raises
    ------
    UnsupportedFileError
        If the text is not comma-separated positive integers.
    """
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) <= 0:
        raise UnsupportedFileError(f"--input-shape {text!r}: expected positive integers C,H,W "
                                   "such as 3,224,224")
    return shape


def check_file(path: Path, max_bytes: int = MAX_MODEL_FILE_BYTES) -> None:
    """Raise a one-line error if ``path`` is missing, not a file, empty or too large."""
    if not path.exists():
        raise UnsupportedFileError(f"{path}: no such file")
    if not path.is_file():
        raise UnsupportedFileError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise UnsupportedFileError(f"{path}: empty file")
    if size > max_bytes:
        raise UnsupportedFileError(f"{path}: {size} bytes, over the {max_bytes} byte limit")


def load_model(spec: str, input_shape: tuple[int, ...] | None = None) -> ChannelGraph:
    """Import a model from a spec.

    Parameters
    ----------
    spec : str
        ``torchvision:NAME``, ``keras:NAME``, or a path to a ``.pt2`` (torch.export.save),
        ``.keras``/``.h5`` (Keras) or ``.json`` (a saved ChannelGraph) file.
    input_shape : tuple of int, optional
        Channels-first (C, H, W) input for zoo models; files carry their own.

    Raises
    ------
    UnsupportedFileError, UnsafeFileError, GraphError
        With a one-line message naming the file and the problem.
    """
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
    path = Path(spec)
    check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        from morphscope.importers.torch_importer import load_pt2

        return load_pt2(path)
    if suffix in (".keras", ".h5", ".hdf5"):
        from morphscope.importers.keras_importer import load_keras_file

        return load_keras_file(path)
    if suffix == ".json":
        return _load_graph_json(path)
    if suffix in (".pt", ".pth", ".bin"):
        read_torch_pickle(path)  # refuses code payloads with UnsafeFileError
        raise UnsupportedFileError(f"{path}: a PyTorch pickle holds weights, not a graph; save the "
                                   "model with torch.export.save (.pt2) or name it torchvision:NAME, "
                                   "and pass this file as --checkpoint")
    raise UnsupportedFileError(f"{path}: unknown model file type {suffix or '(none)'!r}; choose "
                               f"from {', '.join(MODEL_SUFFIXES)}, torchvision:NAME, keras:NAME")


def _example(spec: str) -> dict[str, Any]:
    name = spec.split(":", 1)[1]
    if name not in EXAMPLES:
        raise UnsupportedFileError(f"{spec}: no such bundled example; choose from {sorted(EXAMPLES)}")
    return EXAMPLES[name]


def example_checkpoints(spec: str) -> dict[str, Path]:
    """Label -> checkpoint path of a bundled example."""
    return {label: EXAMPLES_DIR / rel for label, rel in _example(spec)["checkpoints"].items()}


def example_cost_logs(spec: str) -> dict[str, list[dict[str, Any]]]:
    """Label -> the regularizer's ``cost.jsonl`` lines (step, cost, loss) of a bundled example."""
    import json

    return {label: [json.loads(line) for line in (EXAMPLES_DIR / rel).read_text().splitlines() if line]
            for label, rel in _example(spec).get("cost_logs", {}).items()}


def _load_graph_json(path: Path) -> ChannelGraph:
    try:
        return ChannelGraph.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as err:  # JSON and Unicode errors are ValueErrors
        raise UnsupportedFileError(f"{path}: not a MorphScope channel graph JSON "
                                   f"({type(err).__name__}: {err})") from err


def read_torch_pickle(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, no code.

    Raises
    ------
    UnsafeFileError
        If the pickle references anything but tensors and plain data (it would run code).
    UnsupportedFileError
        If the file is not a readable PyTorch file.
    """
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notices; the outcome is what matters
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        imports = _pickle_imports(path)
        if imports:
            raise UnsafeFileError(f"{path}: refused, the pickle would run code (it imports "
                                  f"{', '.join(imports[:3])}); only tensors and plain "
                                  "containers are loaded") from err
        raise UnsupportedFileError(f"{path}: refused, the pickle holds more than tensors and "
                                   "plain containers (torch.load weights_only=True rejects it)") from err
    except Exception as err:  # noqa: BLE001 - torch raises many types on corrupt files
        raise UnsupportedFileError(f"{path}: not a readable PyTorch file "
                                   f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from err


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


def load_framework_model(spec: str, input_shape: tuple[int, ...] | None = None) -> Any:
    """The framework's own model object for a spec, to rebuild with new widths: a CPU
    ``nn.Module`` (torchvision, random weights) or a ``keras.Model``.

    Raises
    ------
    UnsupportedFileError
        For ``.pt2`` and graph ``.json`` files: they hold no rebuildable model.
    """
    if spec.startswith("torchvision:"):
        import torchvision

        from morphscope.importers.torch_importer import build_torchvision

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
    check_file(path)
    if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
        from morphscope.importers.keras_importer import load_keras_file_model

        return load_keras_file_model(path)
    raise UnsupportedFileError(f"{path}: a rebuilt model needs the model itself; use "
                               "torchvision:NAME, keras:NAME or a .keras/.h5 file")
