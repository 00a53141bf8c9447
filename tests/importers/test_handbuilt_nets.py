"""The hand-built tower net gives the hand-computed numbers from both importers."""

import pytest
import torch

from morphscope.analyzers.cost import compile_costs, seed_costs, totals_of
from handbuilt import H, TOWER_MACS, TOWER_TRAINABLE, W, keras_tower_net, torch_tower_net
from morphscope.importers.keras_importer import load_keras_model
from morphscope.importers.torch_importer import load_module, load_pt2
from morphscope.graph import Kind


def per_layer(graph, resource):
    costs = compile_costs(graph)
    values = seed_costs(costs)[resource]
    return {name: int(round(values[i])) for i, name in enumerate(costs.names) if values[i]}


@pytest.fixture(scope="module")
def torch_graph():
    return load_module(torch_tower_net(), (3, H, W), name="tower")


@pytest.fixture(scope="module")
def keras_graph():
    return load_keras_model(keras_tower_net())


def test_torch_tower_macs_per_layer(torch_graph):
    assert per_layer(torch_graph, "macs") == TOWER_MACS


def test_keras_tower_macs_per_layer(keras_graph):
    assert per_layer(keras_graph, "macs") == TOWER_MACS


def test_trainable_params_agree_across_frameworks(torch_graph, keras_graph):
    torch_params = {n: a["trainable_params"] for n, a in torch_graph.ops() if a.get("params")}
    keras_params = {n: a["trainable_params"] for n, a in keras_graph.ops() if a.get("params")}
    assert torch_params == TOWER_TRAINABLE
    assert keras_params == TOWER_TRAINABLE
    # Keras also counts the bn moving mean and variance (2 x 13, non-trainable).
    keras_bn = dict(keras_graph.ops())["bn"]
    assert keras_bn["params"] - keras_bn["trainable_params"] == 2 * 13


def test_torch_tower_nodes(torch_graph):
    kinds = {n: a["kind"] for n, a in torch_graph.ops()}
    assert kinds["stem"] == Kind.CONV and kinds["bn"] == Kind.BN and kinds["fc"] == Kind.LINEAR
    assert kinds["relu"] == Kind.ACT and kinds["pool"] == Kind.GLOBAL_POOL
    concat = [n for n, k in kinds.items() if k == Kind.CONCAT]
    assert concat == ["cat"]
    assert torch_graph.inputs_of("cat") == ["branch_a", "branch_b_pw"]  # port order kept
    assert torch_graph["cat"]["out_channels"] == 23 + 7
    dw = torch_graph["branch_b_dw"]
    assert (dw["groups"], dw["in_channels"], dw["out_channels"]) == (13, 13, 13)
    assert torch_graph["bn"]["gamma_key"] == "bn.weight"
    assert torch_graph["stem"]["out_spatial"] == (H, W)


def test_keras_tower_nodes(keras_graph):
    kinds = {n: a["kind"] for n, a in keras_graph.ops()}
    assert kinds["concat"] == Kind.CONCAT and kinds["pool"] == Kind.GLOBAL_POOL
    assert keras_graph.inputs_of("concat") == ["branch_a", "branch_b_pw"]
    assert keras_graph["bn"]["gamma_key"] == "bn/gamma"
    assert keras_graph["stem"]["out_spatial"] == (H, W)
    assert keras_graph.input_shape == (3, H, W)


def test_pt2_file_gives_the_same_graph_as_live_capture(torch_graph, tmp_path):
    model = torch_tower_net().eval()
    path = tmp_path / "tower.pt2"
    exported = torch.export.export(model, (torch.zeros(1, 3, H, W),))
    torch.export.save(exported, path)
    from_file = load_pt2(path)
    assert per_layer(from_file, "macs") == TOWER_MACS
    assert {n: a["kind"] for n, a in from_file.ops() if n != "x"} == \
        {n: a["kind"] for n, a in torch_graph.ops() if n != "x"}


def test_decomposed_pt2_counts_the_same(tmp_path):
    model = torch_tower_net().eval()
    path = tmp_path / "tower_decomposed.pt2"
    exported = torch.export.export(model, (torch.zeros(1, 3, H, W),)).run_decompositions()
    torch.export.save(exported, path)
    graph = load_pt2(path)
    costs = compile_costs(graph)
    totals = totals_of(costs, seed_costs(costs))
    assert totals["macs"] == sum(TOWER_MACS.values())
    assert totals["params"] == sum(TOWER_TRAINABLE.values())
    assert graph["bn"]["gamma_key"] == "bn.weight"


def test_training_only_branch_is_counted_but_not_in_macs():
    from torch import nn

    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 13, 1)
            self.aux = nn.Linear(13, 11)  # used only when training

        def forward(self, x):
            y = self.conv(x)
            return y if not self.training else (y, self.aux(y.mean((2, 3))))

    graph = load_module(WithAux(), (3, H, W))
    assert graph.detached_params == {"aux": 13 * 11 + 11}
    costs = compile_costs(graph)
    totals = totals_of(costs, seed_costs(costs))
    assert totals["params"] == (3 * 13 + 13) + (13 * 11 + 11)
    assert totals["macs"] == H * W * 3 * 13


def test_data_dependent_branch_is_captured_on_the_zero_input_with_a_note():
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Conv2d(3, 13, 3), nn.BatchNorm2d(13), nn.Conv2d(13, 7, 1)

        def forward(self, x):
            y = self.bn(self.a(x))
            if y.mean() > -1:  # data-dependent: torch.export refuses to guard on it
                y = torch.relu(y)
            return self.b(y)

    model = Branchy().eval()
    graph = load_module(model, (3, H, W))
    assert graph.notes == ["captured on a zero input: data-dependent branches follow that input"]
    costs = compile_costs(graph)
    totals = totals_of(costs, seed_costs(costs))
    # a: 3x3, 3 -> 13, output (H-2)x(W-2); b: 1x1, 13 -> 7 on the same map.
    assert totals["macs"] == 3 * 3 * (H - 2) * (W - 2) * 3 * 13 + (H - 2) * (W - 2) * 13 * 7
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, H, W))
    assert totals["macs"] == counter.get_total_flops() // 2
    assert totals["params"] == sum(p.numel() for p in model.parameters())
    assert graph["bn"]["gamma_key"] == "bn.weight"
