"""The torch regularizer as tensor code: alive counts equal to the analyzers', one graph under
torch.compile, float32 loss for bf16/fp16/autocast models, and one-line refusals."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import handbuilt
from handbuilt import H, W, random_gammas
from morphscope.errors import MorphScopeError
from morphscope.regularizers.torch_regularizer import FlopsRegularizer, GammaRegularizer, unwrap_model

EXAMPLE = torch.zeros(1, 3, H, W)


class GroupedNet(nn.Module):
    """stem(24) -> grouped 3x3 conv (24 -> 24, 4 groups) -> 1x1 (13) -> fc(5): the stem and
    grouped spaces have quantum 4 (each group of 6 channels keeps the same count)."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn_stem = nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.grouped, self.bn_grouped = nn.Conv2d(24, 24, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(24)
        self.head, self.bn_head = nn.Conv2d(24, 13, 1, bias=False), nn.BatchNorm2d(13)
        self.fc = nn.Linear(13, 5)

    def forward(self, x):
        x = torch.relu(self.bn_stem(self.stem(x)))
        x = torch.relu(self.bn_grouped(self.grouped(x)))
        return self.fc(torch.relu(self.bn_head(self.head(x))).mean((2, 3)))


class GroupNormNet(nn.Module):
    """stem(24) -> GroupNorm(4 groups of 6) -> 1x1 (13) -> bn -> fc(5): the stem's space has
    quantum 4, so a rebuilt GroupNorm(4, n) always gets n divisible by 4."""

    def __init__(self):
        super().__init__()
        self.stem, self.gn_stem = nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.GroupNorm(4, 24)
        self.head, self.bn_head = nn.Conv2d(24, 13, 1, bias=False), nn.BatchNorm2d(13)
        self.fc = nn.Linear(13, 5)

    def forward(self, x):
        x = torch.relu(self.gn_stem(self.stem(x)))
        return self.fc(torch.relu(self.bn_head(self.head(x))).mean((2, 3)))


def with_gammas(module, gammas):
    with torch.no_grad():
        for bn, gamma in gammas.items():
            module.get_submodule(bn).weight.copy_(torch.as_tensor(gamma, dtype=torch.float32))
    return module


NETS = {"residual": handbuilt.torch_residual_net, "concat": handbuilt.torch_concat_net,
        "se": handbuilt.torch_se_net, "separable": handbuilt.torch_separable_net, "grouped": GroupedNet,
        "groupnorm": GroupNormNet}
QUANTUM = {"grouped": ("grouped", "bn_stem"), "groupnorm": ("head", "gn_stem")}  # (op reading it, its norm)


@pytest.mark.parametrize("target", ["flops", "latency"])
@pytest.mark.parametrize("net", sorted(NETS))
def test_tensor_alive_widths_equal_the_analyzers(net, target):
    module = NETS[net]()
    reg = GammaRegularizer(module, EXAMPLE, resource=target)
    for seed in range(3):
        gammas = random_gammas(reg.graph, seed, dead_fraction=0.4)
        with_gammas(module, gammas)
        reference = reg.plan.alive_widths(reg.gammas(), reg.threshold)  # the analyzers' numpy rule
        np.testing.assert_array_equal(reg.alive_widths(), reference)
        assert reg.cost() == reg.plan.cost(reference)
        if net in QUANTUM:
            # The space the op reads is scaled by that norm alone; channels come in 4 groups
            # of 6 and each group keeps the largest per-group alive count.
            op, norm = QUANTUM[net]
            space = reg.width_model.spaces.op_in[op][0].space
            per_group = (np.abs(reg.gammas()[norm]) > 0.01).reshape(4, 6).sum(axis=1)
            assert reg.width_model.spaces.quantum[space] == 4
            assert reference[space] == 4 * per_group.max()


def test_threshold_is_compared_as_the_analyzers_do_at_float32_boundaries():
    # 0.01 is not a float32; its nearest float32 is just under it (dead), the next one above
    # it (alive), exactly as float64(gamma) > 0.01 decides.
    module = handbuilt.torch_separable_net()
    reg = FlopsRegularizer(module, EXAMPLE)
    below = np.float32(0.01)
    above = np.nextafter(below, np.float32(1))
    assert float(below) < 0.01 < float(above)
    gamma = np.full(13, 0.5, dtype=np.float32)
    gamma[:4], gamma[4:6] = below, above
    with_gammas(module, {"bn_stem": gamma, "bn_dw": gamma})
    space = reg.width_model.spaces.op_out["stem"][0].space
    assert reg.alive_widths()[space] == 13 - 4
    np.testing.assert_array_equal(reg.alive_widths(), reg.plan.alive_widths(reg.gammas(), 0.01))


def _step(module, reg):
    def step(x, y):
        return F.cross_entropy(module(x), y) + 1e-7 * reg.loss()
    return step


@pytest.mark.parametrize("target", ["flops", "latency"])
def test_a_step_with_the_loss_compiles_into_one_graph(target):
    torch._dynamo.reset()
    module = with_gammas(handbuilt.torch_residual_net(), handbuilt_gammas())
    reg = GammaRegularizer(module, EXAMPLE, resource=target)
    x, y = torch.randn(4, 3, H, W), torch.tensor([0, 1, 2, 3])
    explanation = torch._dynamo.explain(_step(module, reg))(x, y)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    if target == "latency":
        return
    eager = _step(module, reg)(x, y)
    eager.backward()
    eager_grad = module.bn_u1a.weight.grad.clone()
    module.zero_grad()
    compiled = torch.compile(_step(module, reg), fullgraph=True, backend="aot_eager")(x, y)
    compiled.backward()
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-6)
    torch.testing.assert_close(module.bn_u1a.weight.grad, eager_grad)


def handbuilt_gammas():
    rng = np.random.default_rng(7)
    return {bn: rng.uniform(0.0, 1.0, n) * (rng.random(n) > 0.3)
            for bn, n in (("bn_stem", 13), ("bn_u1a", 11), ("bn_u1b", 13), ("bn_u2a", 7), ("bn_u2b", 13))}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models_get_a_finite_float32_loss(dtype):
    module = with_gammas(handbuilt.torch_residual_net(), handbuilt_gammas())
    reg = FlopsRegularizer(module, EXAMPLE)
    full = reg.loss().item()
    assert full > float(np.finfo(np.float16).max)  # this G would overflow in float16
    module.to(dtype)
    loss = reg.loss()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(full, rel=1e-2)  # the gammas rounded to dtype
    (1e-7 * loss).backward()  # the strength applies in float32, before the cast to dtype
    assert torch.isfinite(module.bn_stem.weight.grad.float()).all()
    module.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert reg.loss().dtype == torch.float32
        assert reg.loss().item() == pytest.approx(FlopsRegularizer(module, EXAMPLE).loss().item(), rel=1e-6)


def test_frozen_gammas_get_a_one_line_warning_naming_them():
    module = handbuilt.torch_residual_net()
    module.bn_u1a.weight.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"1 bn scales are frozen \(requires_grad=False\).*: bn_u1a$"):
        FlopsRegularizer(module, EXAMPLE)


@pytest.mark.parametrize("norm", ["frozen", "identity"])
def test_a_model_with_nothing_to_regularize_is_refused_in_one_line(norm):
    from torchvision.ops.misc import FrozenBatchNorm2d

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 13, 3)
            self.norm = FrozenBatchNorm2d(13) if norm == "frozen" else nn.Identity()
            self.fc = nn.Linear(13, 5)

        def forward(self, x):
            return self.fc(self.norm(self.conv(x)).mean((2, 3)))

    with pytest.raises(MorphScopeError, match=r"^Net: nothing to regularize: no trainable norm scale"):
        FlopsRegularizer(Net(), EXAMPLE)


def test_missing_example_input_is_refused():
    with pytest.raises(MorphScopeError, match="pass example_input"):
        FlopsRegularizer(handbuilt.torch_residual_net())


def test_a_gamma_changed_under_the_regularizer_is_refused():
    # What FSDP1 does to a bn built before wrapping: the rank holds a piece of the vector.
    module = handbuilt.torch_residual_net()
    reg = FlopsRegularizer(module, EXAMPLE)
    module.bn_u2a.weight = nn.Parameter(torch.ones(3))
    with pytest.raises(MorphScopeError, match=r"bn_u2a.weight has shape \(3,\), expected \(7,\)"):
        reg.loss()


def test_fsdp1_is_refused_and_wrappers_are_unwrapped():
    from torch.distributed.fsdp import FullyShardedDataParallel

    module = handbuilt.torch_residual_net()
    assert unwrap_model(torch.compile(module)) is module
    assert unwrap_model(nn.DataParallel(module)) is module
    fsdp1 = FullyShardedDataParallel.__new__(FullyShardedDataParallel)  # FSDP1 needs an accelerator to build
    nn.Module.__init__(fsdp1)
    with pytest.raises(MorphScopeError, match=r"FSDP1 \(FullyShardedDataParallel\) is not supported.*fully_shard"):
        unwrap_model(nn.Sequential(fsdp1))
