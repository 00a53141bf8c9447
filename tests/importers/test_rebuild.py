"""Rebuilt PyTorch models: weights owned by functional ops and norm subclasses are resized."""

import numpy as np
import torch
import torchvision

from morphscope.analyzers.alive import gamma_masks
from morphscope.analyzers.morph import Morphed, export_plan, plan_totals
from morphscope.analyzers.widths import compile_width_model
from handbuilt import random_gammas
from morphscope.exporters import rebuild
from morphscope.importers.torch_importer import load_module


def test_convnext_layer_scale_and_layernorm2d_follow_the_widths():
    module = torchvision.models.convnext_tiny().eval()
    graph = load_module(module, (3, 224, 224), name="convnext_tiny")
    model = compile_width_model(graph)
    gammas = random_gammas(graph, seed=1, dead_fraction=0.3)
    masks = gamma_masks(model.spaces, gammas)
    widths = np.array([m.sum() for m in masks], dtype=float)
    plan = export_plan(graph, model, Morphed("random", widths, tuple(masks)), gammas=gammas)
    new = rebuild.rebuild_torch(module, graph, model, plan, tuple(masks))

    assert rebuild.count_torch_params(new) == plan_totals(model, plan)["params"]
    # The last stage's residual stream shrank: its layer scales (C, 1, 1) and the classifier's
    # LayerNorm2d (a subclass, so its channels-first forward is kept) follow it.
    stage = model.spaces.op_out["features.7.0.mul"][0].space
    alive = int(widths[stage])
    # The channels of the stream whose group max |gamma| is over the threshold, counted here.
    scores = np.max([np.abs(gammas[bn][off:off + 768]) for bn, off in model.spaces.bn_cover[stage]], axis=0)
    assert alive == int((scores.astype(np.float32) > np.float32(0.01)).sum()) < 768
    assert new.features[7][0].layer_scale.shape == (alive, 1, 1)
    kept = np.flatnonzero(masks[stage])
    np.testing.assert_array_equal(new.features[7][0].layer_scale.detach().numpy().reshape(-1),
                                  module.features[7][0].layer_scale.detach().numpy().reshape(-1)[kept])
    assert type(new.classifier[0]) is type(module.classifier[0])
    assert new.classifier[0].normalized_shape == (alive,)
    assert new(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
