"""One small PyTorch module per counting cause found in the sweeps (issue 12), with the
expected numbers written as arithmetic; FlopCounterMode and ``sum(p.numel())`` agree with them.

Maps are 17 x 19 and channel counts 3, 13, 23, 29 so that a swapped axis fails.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from morphscope.analyzers.cost import compile_costs, seed_costs, totals_of
from morphscope.graph import Kind
from morphscope.importers import aten
from morphscope.importers.aten import build_graph
from morphscope.importers.torch_importer import load_module, load_pt2, program_from_exported

H, W = 17, 19


def totals(graph):
    costs = compile_costs(graph)
    return totals_of(costs, seed_costs(costs))


def torch_reference(model, shape):
    """(params, MACs) as torch counts them: sum(p.numel()) and FlopCounterMode / 2."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def check(model, shape, params, macs):
    graph = load_module(model.eval(), shape)
    counted = totals(graph)
    assert (counted["params"], counted["macs"]) == (params, macs)
    assert torch_reference(model, shape) == (params, macs)
    return graph


# -- 1. shared weights: params once, MACs at every call ----------------------------------------

def test_linear_called_twice_counts_params_once_and_macs_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(13, 13)

        def forward(self, x):
            return self.fc(self.fc(x))

    graph = check(Twice(), (13,), params=13 * 13 + 13, macs=2 * 13 * 13)
    assert graph.detached_params == {}


def test_conv_under_two_module_names_counts_params_once():
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(13, 13, 3, padding=1)
            self.b = self.a  # one module, two names (RetinaNet's shared heads)

        def forward(self, x):
            return self.b(self.a(x))

    graph = check(Aliased(), (13, H, W), params=3 * 3 * 13 * 13 + 13,
                  macs=2 * 3 * 3 * H * W * 13 * 13)
    assert graph.detached_params == {}
    assert {n for n, a in graph.ops() if a["kind"] == Kind.CONV} == {"a", "a_1"}


def test_exported_and_pt2_routes_count_a_module_under_two_names_once(tmp_path):
    class Aliased(nn.Module):  # coat_lite_tiny's cpe modules: one module kept by two parents
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(13, 23, 3, padding=1)
            self.stage = nn.ModuleDict({"a": self.a})  # a second name nobody calls it by

        def forward(self, x):
            return self.a(x)

    params = 3 * 3 * 13 * 23 + 23
    exported = torch.export.export(Aliased().eval(), (torch.zeros(1, 13, H, W),))
    assert len(exported.graph_signature.inputs_to_parameters) == 4  # torch lifts each name
    path = tmp_path / "aliased.pt2"
    torch.export.save(exported, path)
    for graph in (build_graph(program_from_exported(exported), "aliased"), load_pt2(path)):
        assert totals(graph)["params"] == params
        assert graph.detached_params == {}


# -- 8. params from the parameters an op owns: buffers never, gains included ---------------------

def test_conv_with_a_buffer_weight_owns_no_params():
    class BlurPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("filt", torch.ones(13, 1, 3, 3) / 9)
            self.conv = nn.Conv2d(3, 13, 1)

        def forward(self, x):
            return F.conv2d(self.conv(x), self.filt, stride=1, padding=1, groups=13)

    # conv 1x1 3 -> 13 with bias; blur: depthwise 3x3 on 13 channels, weight a buffer
    check(BlurPool(), (3, H, W), params=3 * 13 + 13, macs=H * W * 3 * 13 + 3 * 3 * H * W * 13)


def test_zero_bias_buffer_is_not_counted():
    class QKV(nn.Module):  # Swin V2 / BEiT: k has no bias, a zeros buffer stands in
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(3 * 23, 13))
            self.q_bias, self.v_bias = nn.Parameter(torch.zeros(23)), nn.Parameter(torch.zeros(23))
            self.register_buffer("k_bias", torch.zeros(23), persistent=False)

        def forward(self, x):
            return F.linear(x, self.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))

    check(QKV(), (29, 13), params=3 * 23 * 13 + 2 * 23, macs=29 * 13 * 3 * 23)


def test_weight_standardized_conv_counts_its_gain():
    class ScaledStdConv(nn.Conv2d):  # NFNet: the gain is a parameter of the conv
        def __init__(self):
            super().__init__(3, 13, 3, padding=1)
            self.gain = nn.Parameter(torch.ones(13, 1, 1, 1))

        def forward(self, x):
            weight = F.batch_norm(self.weight.reshape(1, 13, -1), None, None,
                                  weight=self.gain.view(-1), training=True).reshape_as(self.weight)
            return F.conv2d(x, weight, self.bias, padding=1)

    # kernel 3*3*3*13 + bias 13 + gain 13
    graph = check(ScaledStdConv(), (3, H, W), params=3 * 3 * 3 * 13 + 13 + 13,
                  macs=3 * 3 * H * W * 3 * 13)
    conv, = [a for _, a in graph.ops() if a["kind"] == Kind.CONV]
    assert sorted(conv["param_keys"]) == ["bias", "gain", "weight"]


# -- 3. convs on batch-folded tensors -------------------------------------------------------------

def test_conv_on_batch_folded_windows_counts_every_window():
    class Windows(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 13, 3, padding=1)

        def forward(self, x):  # 4 windows of 8 x 9 folded into the batch axis
            x = x[:, :, :16, :18].reshape(1, 3, 2, 8, 2, 9).permute(0, 2, 4, 1, 3, 5)
            return self.conv(x.reshape(4, 3, 8, 9))

    graph = check(Windows(), (3, H, W), params=3 * 3 * 3 * 13 + 13, macs=4 * 3 * 3 * 8 * 9 * 3 * 13)
    assert graph["conv"]["batch"] == 4


# -- 6. matmuls under torch.autocast(enabled=False) and torch.no_grad() ---------------------------

class AutocastOff(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(13, 23)

    def forward(self, x):
        y = self.fc(x)
        with torch.no_grad():  # torch.export: a wrap_with_set_grad_enabled op, holding
            with torch.autocast("cpu", enabled=False):  # a wrap_with_autocast op
                return y @ y.transpose(-1, -2)


def test_matmul_under_autocast_off_is_counted_by_every_route(tmp_path):
    # fc on 29 tokens: 29*13*23; y @ y^T: 29*23*29
    params, macs = 13 * 23 + 23, 29 * 13 * 23 + 29 * 23 * 29
    check(AutocastOff(), (29, 13), params=params, macs=macs)
    exported = torch.export.export(AutocastOff().eval(), (torch.zeros(1, 29, 13),))
    targets = {str(n.target) for m in exported.graph_module.modules() for n in m.graph.nodes}
    assert {"wrap_with_set_grad_enabled", "wrap_with_autocast"} <= {t.rsplit(".", 1)[-1] for t in targets}
    inlined = build_graph(program_from_exported(exported), "autocast")
    assert totals(inlined)["macs"] == macs
    path = tmp_path / "autocast.pt2"
    torch.export.save(exported, path)
    from_file = load_pt2(path)
    assert (totals(from_file)["params"], totals(from_file)["macs"]) == (params, macs)
    # the bodies' ops keep their layer names: the same nodes as torch's own inlining
    assert dict(from_file.ops()).keys() == dict(inlined.ops()).keys()
    assert {"fc", "matmul"} <= dict(from_file.ops()).keys()


# -- 7. einsum / bmm / baddbmm with parameter operands and between activations --------------------

def test_products_with_parameter_operands_and_between_activations():
    class Products(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(13, 23))
            self.heads = nn.Parameter(torch.zeros(29, 23, 3))
            self.bias = nn.Parameter(torch.zeros(29, 29))

        def forward(self, x):  # x: (1, 29, 13)
            a = torch.einsum("bnc,cd->bnd", x, self.w)  # parameter operand
            b = torch.bmm(a[0].unsqueeze(-2), self.heads)  # batched weight: (29, 1, 3)
            s = torch.baddbmm(self.bias.unsqueeze(0), a, a.transpose(1, 2))  # activations
            return torch.bmm(s, a), b

    macs = 29 * 13 * 23 + 29 * 23 * 3 + 29 * 23 * 29 + 29 * 29 * 23
    check(Products(), (29, 13), params=13 * 23 + 29 * 23 * 3 + 29 * 29, macs=macs)


# -- 5. the .pt2 JSON route binds arguments by name -----------------------------------------------

class MaskedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(13, 3 * 23)
        self.register_buffer("mask", torch.zeros(29, 31))

    def forward(self, x):  # x: (1, 31, 13); 29 queries attend to 31 keys
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q[:, :29], k, v, attn_mask=self.mask)


def test_pt2_file_binds_attention_arguments_by_name(tmp_path):
    # qkv: 31*13*69; q k^T: 29*23*31; attn v: 29*31*23 (the mask, (29, 31), is no operand)
    macs = 31 * 13 * 69 + 29 * 23 * 31 + 29 * 31 * 23
    live = totals(load_module(MaskedAttention().eval(), (31, 13)))
    path = tmp_path / "attention.pt2"
    torch.export.save(torch.export.export(MaskedAttention().eval(), (torch.zeros(1, 31, 13),)), path)
    assert live["macs"] == totals(load_pt2(path))["macs"] == macs


# -- 9. errors in graph building are bugs, not capture failures -----------------------------------

def test_channel_unbind_that_drops_the_axis_imports():
    class Unbind(nn.Module):  # csatv2: unbind along the channel axis drops that axis
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 13, 1)

        def forward(self, x):
            first, *rest = self.conv(x).unbind(1)
            return first * 2

    graph = check(Unbind(), (3, H, W), params=3 * 13 + 13, macs=H * W * 3 * 13)
    splits = [a for _, a in graph.ops() if a["kind"] == Kind.SPLIT]
    assert len(splits) == 13 and all(a["out_channels"] == 1 for a in splits)


def test_graph_building_bug_surfaces_with_its_own_type_and_the_op(monkeypatch):
    def broken(ctx):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(aten.ATTRS_BY_KIND, Kind.CONV, broken)
    with pytest.raises(ZeroDivisionError, match="a bug") as info:
        load_module(nn.Conv2d(3, 13, 1), (3, H, W))
    assert "MorphScope bug" in info.value.__notes__[0] and "aten.convolution" in info.value.__notes__[0]


def test_capture_failure_names_every_route():
    from morphscope.errors import GraphError

    with pytest.raises(GraphError, match=r"Conv2d: could not run the model at input \(5, 17, 19\) "
                                         r"\(meta forward pass: .*; cpu forward pass: .*; torch.export"):
        load_module(nn.Conv2d(3, 13, 1), (5, H, W))
