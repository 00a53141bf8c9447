"""Your own model in, a smaller model out: `morphscope.rebuild` on a custom nn.Module and a
custom functional keras.Model, after a few steps with the FLOP regularizer.

The PyTorch net (17x19 input; every block MorphNet ties channels in):

    x(3) -> stem conv 3x3 (24) bn relu -+-> res_a conv (20) bn relu -> res_b conv (24) bn -+-> add -> relu
                                        +------------------------------------------------+
         -> tower_a conv 1x1 (16) bn relu --+
         -> tower_b conv 3x3 (12) bn relu --+-> concat (28) -> dw conv 3x3 (28, groups 28) bn relu
         -> pw conv 1x1 (32) bn relu -> SE (pool, 1x1 32->8 relu, 1x1 8->32 sigmoid, multiply)
         -> grouped conv 3x3 (36, groups 4) bn relu -> pool -> linear (10)

"Dead" channels are made the way a long regularized run leaves them: their bn scale and shift
at zero in every bn of their tied group, so the seed's own output is already the output with
those channels zeroed, and a rebuild that copies the alive weights must reproduce it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import morphscope
from morphscope.errors import MorphScopeError
from morphscope.regularizers.torch_regularizer import FlopsRegularizer

H, W = 17, 19


def _cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class OwnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 24)
        self.res_a = _cbr(24, 20)
        self.res_b = nn.Sequential(nn.Conv2d(20, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24))
        self.tower_a = _cbr(24, 16, 1)
        self.tower_b = _cbr(24, 12, 3)
        self.dw = _cbr(28, 28, 3, groups=28)
        self.pw = _cbr(28, 32, 1)
        self.se_reduce = nn.Conv2d(32, 8, 1)
        self.se_expand = nn.Conv2d(8, 32, 1)
        self.grouped = _cbr(32, 36, 3, groups=4)
        self.head = nn.Linear(36, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.res_b(self.res_a(x)))
        x = torch.cat([self.tower_a(x), self.tower_b(x)], dim=1)
        x = self.pw(self.dw(x))
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(F.adaptive_avg_pool2d(x, 1)))))
        x = self.grouped(x * gate)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# Dead channels by bn module. Tied bns get the same channels: the residual add ties stem.1 and
# res_b.1; dw.1 (after the depthwise conv) scales the concat, tower_a at 0..15, tower_b at 16..27.
# The grouped conv (groups 4) reads pw's space and writes its own: one dead channel per group.
DEAD = {
    "stem.1": [1, 5, 6, 17, 23], "res_b.1": [1, 5, 6, 17, 23],  # 24 -> 19
    "res_a.1": [0, 2, 4, 19],                                   # 20 -> 16
    "tower_a.1": [3, 9], "tower_b.1": [0, 11],                  # 16 -> 14, 12 -> 10
    "dw.1": [3, 9, 16 + 0, 16 + 11],
    "pw.1": [2, 11, 17, 30],                                    # 32 -> 28 (7 in each group of 8)
    "grouped.1": [0, 9, 18, 27],                                # 36 -> 32 (8 in each group of 9)
}


def _trained_net() -> tuple[OwnNet, FlopsRegularizer, torch.Tensor]:
    torch.manual_seed(0)
    net = OwnNet()
    x = torch.randn(4, 3, H, W)
    reg = FlopsRegularizer(net, example_input=x[:1])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(3):  # a few regularized steps (train mode: bn statistics move)
        loss = F.cross_entropy(net(x), torch.arange(4)) + 1e-8 * reg.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for bn, channels in DEAD.items():
            net.get_submodule(bn).weight[channels] = 0.0
            net.get_submodule(bn).bias[channels] = 0.0
    return net.eval(), reg, x


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def trained():
    return _trained_net()


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
