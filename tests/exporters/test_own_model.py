"""Your own model in, a smaller model out: `morphscope.rebuild` on a custom nn.Module (drawn
in tests/own_models.py) after a few steps with the FLOP regularizer.

Dead channels: their bn scale and shift at zero in every bn of their tied group, so the
seed's own output is the output with them zeroed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import morphscope
from morphscope.errors import MorphScopeError
from own_models import OwnNet, trained_own_net


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def trained():
    return trained_own_net()


def test_report_takes_the_live_module_and_its_regularizer(trained):
    net, reg, x = trained
    doc = morphscope.report(net, reg, example_input=x[:1])
    assert doc["seed"]["params"] == _params(net)
    widths = doc["morphed"][0]["widths"]
    # Each group's seed width less its dead channels, written out:
    assert widths["stem.0"] == widths["res_b.0"] == 24 - 5
    assert widths["res_a.0"] == 20 - 4
    assert widths["tower_a.0"] == 16 - 2 and widths["tower_b.0"] == 12 - 2
    assert widths["pw.0"] == widths["se_expand"] == 32 - 4
    assert widths["se_reduce"] == 8  # no bn scales it: kept whole
    assert widths["grouped.0"] == 36 - 4
    # The same from the state_dict and from the regularizer's own graph:
    assert morphscope.report(reg, net.state_dict())["morphed"][0]["widths"] == widths


def test_rebuild_counts_what_was_predicted_and_trains(trained):
    net, reg, x = trained
    small = morphscope.rebuild(net, reg, example_input=x[:1])
    predicted = morphscope.export(net, reg, example_input=x[:1])["predicted_params"]
    assert _params(small) == predicted < _params(net)
    assert small.stem[0].weight.shape == (19, 3, 3, 3)
    assert small.grouped[0].weight.shape == (32, 28 // 4, 3, 3)  # (out, in / groups, kh, kw)
    small.train()
    optimizer = torch.optim.SGD(small.parameters(), lr=0.1)
    before = small.head.weight.detach().clone()
    loss = F.cross_entropy(small(x), torch.arange(4))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, small.head.weight)


def test_rebuild_with_copied_weights_gives_the_seeds_outputs(trained):
    net, reg, x = trained
    for structure in (reg, net.state_dict()):
        small = morphscope.rebuild(net, structure, copy_weights=True, example_input=x[:1])
        with torch.no_grad():
            np.testing.assert_allclose(small(x).numpy(), net(x).numpy(), atol=1e-5, rtol=0)
    assert _params(net) == _params(OwnNet())  # the seed itself is untouched


def test_round_to_8_keeps_groups_consistent(trained):
    net, reg, x = trained
    small = morphscope.rebuild(net, reg, round_to=8, copy_weights=True, example_input=x[:1])
    out = morphscope.export(net, reg, round_to=8, example_input=x[:1])
    assert _params(small) == out["predicted_params"]
    # 19 -> 24, 16 stays, 14 -> 16; 10 -> 16 is over its seed's 12, so 12; 28 -> lcm(4, 8) = 8 -> 32
    assert small.stem[0].out_channels == small.res_b[0].out_channels == 24
    assert small.res_a[0].out_channels == 16
    assert small.tower_a[0].out_channels == 16 and small.tower_b[0].out_channels == 12
    assert small.pw[0].out_channels == small.se_expand.out_channels == 32
    # grouped conv, groups 4 and rounding 8: multiples of lcm(4, 8) = 8
    assert small.grouped[0].out_channels == 32 and small.grouped[0].groups == 4
    assert out["rounding_added"]["params"] > 0
    with torch.no_grad():
        assert small(x).shape == (4, 10)


def test_copied_weights_refused_when_a_multiplier_widens_past_the_seed(trained):
    net, reg, x = trained
    with pytest.raises(MorphScopeError, match="cannot copy weights"):
        morphscope.rebuild(net, reg, multiplier=2.0, copy_weights=True, example_input=x[:1])


def test_a_widths_dict_rebuilds_and_a_bare_module_needs_an_input(trained):
    net, reg, x = trained
    widths = {"stem.0": 12, "res_b.0": 12, "pw.0": 16}
    small = morphscope.rebuild(net, widths, example_input=x[:1])
    assert small.stem[0].out_channels == 12 and small.pw[0].out_channels == 16
    with pytest.raises(MorphScopeError, match="pass example_input"):
        morphscope.report(net)
    with pytest.raises(MorphScopeError, match="holds no structure"):
        morphscope.rebuild(net, 3.5, example_input=x[:1])
    with pytest.raises(MorphScopeError, match="torchvision:resnet18"):
        morphscope.report("resnet18")
