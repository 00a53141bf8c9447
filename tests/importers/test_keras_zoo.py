"""Every keras.applications model imports with Keras' own parameter count and exact MACs.

The MAC reference is computed here, independently of the importer: for every layer with a
kernel, ``prod(kernel.shape) * prod(output spatial dims)`` (SeparableConv: its depthwise and
pointwise kernels), which is the conv/dense MAC count at batch 1.
"""

import math

import pytest

from morphscope.analyzers.cost import compile_costs, seed_costs, totals_of
from morphscope.analyzers.widths import compile_width_model
from morphscope.graph import Kind
from morphscope.importers.keras_importer import build_keras_application, keras_application_names, load_keras_model

ZOO = keras_application_names()


def reference_macs(model):
    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        cls = type(layer).__name__
        if not layer.weights or hasattr(layer, "layers"):
            continue
        pixels = math.prod(layer.output.shape[1:-1])
        if cls.startswith("SeparableConv"):
            total += (math.prod(layer.depthwise_kernel.shape)
                      + math.prod(layer.pointwise_kernel.shape)) * pixels
        elif cls.startswith(("Conv", "DepthwiseConv")) or cls == "Dense":
            total += math.prod(layer.kernel.shape) * pixels
    return total


def test_zoo_lists_every_application():
    for name in ("ResNet50", "MobileNetV2", "EfficientNetB0", "InceptionV3", "ConvNeXtTiny",
                 "NASNetMobile", "Xception", "DenseNet121", "VGG16"):
        assert name in ZOO
    assert len(ZOO) >= 40


@pytest.mark.parametrize("name", ZOO)
def test_keras_application_counts_match_keras(name):
    model = build_keras_application(name)
    graph = load_keras_model(model, name=name)
    costs = compile_costs(graph)
    totals = totals_of(costs, seed_costs(costs))

    assert totals["params"] == model.count_params()
    assert totals["macs"] == reference_macs(model)
    assert not graph.detached_params  # every layer of an application runs at inference
    widths = compile_width_model(graph)
    a_in, a_out = widths.m_in @ widths.seed_widths, widths.m_out @ widths.seed_widths
    for i, op in enumerate(widths.costs.names):
        if graph[op]["kind"] in (Kind.CONV, Kind.LINEAR):
            assert (a_in[i], a_out[i]) == (graph[op]["in_channels"], graph[op]["out_channels"]), op
