"""Every torchvision classification model imports with exact parameters and MACs.

References come from torch itself: ``sum(p.numel())`` and FlopCounterMode (run on the meta
device, so no weights are allocated), and from torchvision's published weight metadata
(``_ops``: GFLOPS in torchvision's convention, i.e. conv+matmul MACs).
"""

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from morphscope.analyzers.cost import compile_costs, seed_costs, totals_of
from morphscope.analyzers.widths import compile_width_model
from morphscope.graph import Kind
from morphscope.importers.torch_importer import build_torchvision, load_module, torchvision_input_size

ZOO = torchvision.models.list_models(module=torchvision.models)


def flop_counter_total(model, side):
    """FlopCounterMode's total: torch counts a multiply-accumulate as 2 FLOPs."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, side, side, device="meta"))
    return counter.get_total_flops()


def test_zoo_is_the_full_classification_list():
    # The CNN families the foundation issue names must all be in the sweep.
    families = ["resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "mnasnet",
                "efficientnet_b", "efficientnet_v2", "regnet", "densenet", "inception_v3",
                "googlenet", "shufflenet", "squeezenet", "vgg", "alexnet", "convnext"]
    for family in families:
        assert any(name.startswith(family) for name in ZOO), family
    assert len(ZOO) >= 80


@pytest.mark.parametrize("name", ZOO)
def test_torchvision_model_counts_match_torch(name):
    model = build_torchvision(name).eval()
    side = torchvision_input_size(model, name)
    graph = load_module(model, (3, side, side), name=name)
    costs = compile_costs(graph)
    totals = totals_of(costs, seed_costs(costs))

    assert totals["params"] == sum(p.numel() for p in model.parameters())
    torch_flops = flop_counter_total(model, side)
    assert totals["flops"] == torch_flops
    assert totals["macs"] == torch_flops // 2

    # The channel spaces account for every conv/linear input and output channel, and the
    # compiled width model reproduces the seed counts.
    widths = compile_width_model(graph)
    a_in, a_out = widths.m_in @ widths.seed_widths, widths.m_out @ widths.seed_widths
    for i, op in enumerate(widths.costs.names):
        if graph[op]["kind"] in (Kind.CONV, Kind.LINEAR):
            assert (a_in[i], a_out[i]) == (graph[op]["in_channels"], graph[op]["out_channels"]), op
    assert widths.totals(widths.seed_widths)["macs"] == totals["macs"]

    # torchvision's published GFLOPS for weights made at this input size.
    published = [w for w in torchvision.models.get_model_weights(name)
                 if w.transforms().crop_size[0] == side and "_ops" in w.meta
                 and w.meta["num_params"] == totals["params"]]
    for weights in published:
        assert round(totals["macs"] / 1e9, 3) == pytest.approx(weights.meta["_ops"], abs=1e-3), weights
