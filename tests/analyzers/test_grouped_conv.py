"""Grouped convs (resnext, regnet): each group keeps the same number of channels."""

import numpy as np
import pytest

from morphscope.analyzers.alive import gamma_masks
from morphscope.analyzers.morph import Morphed, export_plan, plan_totals
from morphscope.analyzers.widths import apply_multiplier, compile_width_model
from handbuilt import random_gammas
from morphscope.importers.torch_importer import load_module


@pytest.mark.parametrize("name", ["resnext50_32x4d", "regnet_x_400mf"])
def test_grouped_conv_widths_stay_multiples_of_groups(name):
    import torchvision

    from morphscope.exporters import rebuild

    module = torchvision.models.get_model(name).eval()
    graph = load_module(module, (3, 224, 224), name=name)
    model = compile_width_model(graph)
    gammas = random_gammas(graph, seed=3, dead_fraction=0.4)
    masks = gamma_masks(model.spaces, gammas)
    widths = np.array([m.sum() for m in masks], dtype=float)
    grouped = [(n, a) for n, a in graph.ops() if 1 < a.get("groups", 1) < a.get("in_channels", 0)]
    assert grouped
    for op, attrs in grouped:
        space = model.spaces.op_in[op][0].space
        assert model.spaces.quantum[space] % attrs["groups"] == 0
        per_group = masks[space].reshape(attrs["groups"], -1).sum(axis=1)
        assert (per_group == per_group[0]).all()  # equal alive count in every group
    # A width multiplier keeps them multiples of the groups.
    grown = apply_multiplier(model.spaces, widths, 1.37)
    for op, attrs in grouped:
        assert grown[model.spaces.op_in[op][0].space] % attrs["groups"] == 0
    # The rebuilt model has the predicted parameters and runs.
    plan = export_plan(graph, model, Morphed("random", widths, tuple(masks)), gammas=gammas)
    new = rebuild.rebuild_torch(module, graph, model, plan, tuple(masks))
    assert rebuild.count_torch_params(new) == plan_totals(model, plan)["params"]
    import torch

    assert new(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
