"""Hardware-aligned widths: every pruned width rounded up to a multiple of `round_to`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import morphscope
from handbuilt import random_gammas
from morphscope.analyzers.spaces import ChannelSpaces
from morphscope.analyzers.widths import compile_width_model, round_widths, solve_multiplier
from morphscope.errors import MorphScopeError
from morphscope.importers.checkpoints import LearnedStructure


def _spaces(sizes, quantum, pinned=None) -> ChannelSpaces:
    n = len(sizes)
    return ChannelSpaces(np.array(sizes), np.array(pinned or [False] * n), {}, np.array(quantum),
                         {}, {}, {}, {})


def test_round_widths_arithmetic():
    spaces = _spaces([64, 61, 96, 40, 23, 48], [1, 1, 12, 1, 1, 1], [False, False, False, False, False, True])
    widths = np.array([43.0, 60.0, 50.0, 0.0, 23.0, 17.0])
    # 43 -> 48; 60 -> 64 is over its seed 61 -> 61; quantum 12 with 8: lcm 24, 50 -> 72;
    # dead stays 0; 23 is the seed width (not pruned) and stays; pinned stays.
    assert round_widths(spaces, widths, 8).tolist() == [48.0, 61.0, 72.0, 0.0, 23.0, 17.0]
    # expanded past the seed: rounded up without the cap (70 -> 72 over the seed's 64)
    assert round_widths(spaces, np.array([70.0, 61.0, 96.0, 40.0, 23.0, 48.0]), 8)[0] == 72.0
    assert round_widths(spaces, widths, 1).tolist() == widths.tolist()
    for bad in (0, 2.5, -8, True):
        with pytest.raises(MorphScopeError, match="whole number >= 1"):
            round_widths(spaces, widths, bad)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "efficientnet_b0"])
def test_round_to_8_on_torchvision_models(name):
    module = torchvision.models.get_model(name, weights=None).eval()
    example = torch.zeros(1, 3, 224, 224)
    graph = morphscope.load_model(module, example_input=example)
    structure = LearnedStructure("random", gammas=random_gammas(graph, seed=3, dead_fraction=0.4))
    small = morphscope.rebuild(module, structure, round_to=8, example_input=example)
    predicted = morphscope.export(graph, structure, round_to=8)["predicted_params"]
    assert sum(p.numel() for p in small.parameters()) == predicted
    seed_layers = {n: m for n, m in module.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    model = compile_width_model(graph)
    pinned = {op for op, layout in model.spaces.op_out.items()
              if any(model.spaces.pinned[seg.space] for seg in layout)}
    changed = 0
    for layer_name, layer in small.named_modules():
        if not isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        width = layer.out_channels if isinstance(layer, torch.nn.Conv2d) else layer.out_features
        seed = seed_layers[layer_name]
        seed_width = seed.out_channels if isinstance(seed, torch.nn.Conv2d) else seed.out_features
        assert width % 8 == 0 or width == seed_width or layer_name in pinned, (layer_name, width)
        changed += width != seed_width
    assert changed > 10  # random gammas at 40% dead: most layers shrank
    with torch.no_grad():
        assert small(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_solve_respects_rounding():
    graph = morphscope.load_model("torchvision:mobilenet_v2")
    model = compile_width_model(graph)
    gammas = random_gammas(graph, seed=5, dead_fraction=0.5)
    out = morphscope.expand(graph, LearnedStructure("random", gammas=gammas), round_to=8)
    # the rounded widths are what is costed: within the seed's FLOPs, and all multiples of 8
    assert out["cost"] <= morphscope.report(graph)["seed"]["flops"]
    assert all(w % 8 == 0 or w == 1000 for w in out["widths"].values())
    plain = solve_multiplier(model, model.seed_widths * 0.5, "flops")
    assert solve_multiplier(model, model.seed_widths * 0.5, "flops", round_to=8) <= plain
