"""Framework load order in one process.

torchvision loads triton, and triton loaded after TensorFlow segfaults the process (DESIGN
section 10). The Keras path never imports torch; a process that uses both frameworks (the app,
a notebook) loads triton first, and a torchvision import that would crash is refused instead.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from morphscope.errors import GraphError, UnsupportedFileError


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def load_triton_first() -> None:
    """For a process that will use both PyTorch and Keras: load triton while TensorFlow is
    not loaded yet (about 0.2 s; nothing happens without triton or once TensorFlow is in)."""
    if "triton" not in sys.modules and "tensorflow" not in sys.modules and _triton_installed():
        import triton  # noqa: F401 - load order is the point


def import_torchvision(what: str) -> Any:
    """``import torchvision``, refused in one line where it would crash the process.

    Raises
    ------
    GraphError
        TensorFlow is loaded and triton is not: importing torchvision would segfault.
    """
    if "tensorflow" in sys.modules and "triton" not in sys.modules and _triton_installed():
        raise GraphError(f"{what}: this process already loaded TensorFlow (Keras), and torchvision "
                         "would load triton after it, which crashes the process; use PyTorch "
                         "models in another process, or import torchvision before keras")
    import torchvision

    return torchvision


# What each kind of model spec or file needs installed, and the extra that installs it.
_NEEDS = {".pt2": ("torch", "torch"), "torchvision:": ("torchvision", "torch"), ".keras": ("keras", "keras"),
          ".h5": ("keras", "keras"), ".hdf5": ("keras", "keras"), "keras:": ("keras", "keras")}


def require_framework(spec: str, name: str | None = None) -> None:
    """Refuse in one line a model whose framework is not installed (a light install).

    Raises
    ------
    UnsupportedFileError
        Naming the file (``name``, else ``spec``), the missing package and the extra to install.
    """
    lowered = spec.lower()
    for marker, (module, extra) in _NEEDS.items():
        found = lowered.startswith(marker) if marker.endswith(":") else lowered.endswith(marker)
        if found and importlib.util.find_spec(module) is None:
            raise UnsupportedFileError(f"{name or spec}: reading it needs {module}, which is not "
                                       f"installed (pip install -e '.[{extra}]' in the checkout)")
