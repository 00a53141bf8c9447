"""The examples in docstrings and in the README's API section run as written."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import morphscope

ROOT = Path(__file__).resolve().parents[1]
# Modules whose import needs a framework or the UI at module level are still collected:
# frameworks are imported lazily, inside functions.
PACKAGES = ("morphscope", "morphscope.analyzers", "morphscope.importers", "morphscope.exporters",
            "morphscope.regularizers", "morphscope.cli")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(module.__path__)
                  if not m.ispkg]
    return sorted(set(names))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_some_modules_have_examples():
    # The collection above must not silently find nothing.
    found = sum(len(doctest.DocTestFinder().find(importlib.import_module(n))) for n in _modules())
    assert found >= 5


def test_readme_api_example_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = doctest.testfile(str(ROOT / "README.md"), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4
    assert result.failed == 0
