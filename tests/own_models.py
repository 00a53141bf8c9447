"""A custom PyTorch network, as a user brings it, trained a few steps with the FLOP regularizer
(shared by tests/exporters: the rebuild, .pt2 and app tests).

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

import torch
import torch.nn.functional as F
from torch import nn

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


def trained_own_net() -> tuple[OwnNet, FlopsRegularizer, torch.Tensor]:
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
