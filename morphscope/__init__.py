"""MorphScope: see, compare and export the structure MorphNet learns for your network.

    >>> import morphscope
    >>> doc = morphscope.report("torchvision:resnet18")      # doctest: +SKIP
    >>> doc["seed"]["macs"]                                   # doctest: +SKIP
    1814073344

The public functions (:mod:`morphscope.api`) are loaded on first use, so importing a part of
the package (``morphscope.graph``) stays cheap. Stages: ``morphscope.importers`` (file ->
graph), ``morphscope.analyzers`` (costs, groups, widths), ``morphscope.exporters`` (widths
JSON, tables, rebuilt models), ``morphscope.regularizers`` (training), and the faces
``morphscope.cli`` and ``morphscope.explorer`` (the Streamlit app).
"""

from __future__ import annotations

__all__ = ["load_model", "load_structure", "report", "expand", "export", "rebuild", "measure", "profile"]


def __getattr__(name: str):
    if name in __all__:
        from morphscope import api

        return getattr(api, name)
    raise AttributeError(f"module 'morphscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
