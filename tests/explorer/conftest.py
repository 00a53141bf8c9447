"""Shared fixtures of the explorer tests."""

import pytest

from morphscope.analyzers.widths import compile_width_model
from morphscope.importers.checkpoints import load_structure
from morphscope.importers.load import example_checkpoints, load_model


@pytest.fixture(scope="module")
def example():
    """The bundled digits example: its graph, width model and each checkpoint's gammas."""
    graph = load_model("example:digits")
    model = compile_width_model(graph)
    gammas = {label: load_structure(graph, path).gammas
              for label, path in example_checkpoints("example:digits").items()}
    return graph, model, gammas
