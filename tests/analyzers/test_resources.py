"""The resource registry: each resource's total against arithmetic written here, exact totals,
absurd graphs refused, the solver's infeasible budget."""


import numpy as np
import pytest

from morphscope.analyzers.cost import bilinear, compile_costs
from morphscope.analyzers.hardware import get_hardware
from morphscope.analyzers.resources import RESOURCE_NAMES, RESOURCES, Branch, exact_total, get_resource
from morphscope.analyzers.widths import compile_width_model, solve_multiplier
from morphscope.errors import GraphError, MorphScopeError
from morphscope.graph import ChannelGraph, Kind

# One conv and one linear, with sizes that fail if an axis is swapped:
#   x(13, 17x19) -> conv 3x3 (13->23, bias) -> squeeze (identity) -> fc (23->29) -> out
CONV_MACS = 3 * 3 * 17 * 19 * 13 * 23  # kh*kw*H*W*in*out
FC_MACS = 23 * 29
CONV_BYTES = 4 * (17 * 19 * 13 + 17 * 19 * 23 + 3 * 3 * 13 * 23 + 23)  # in map, out map, kernel, bias
FC_BYTES = 4 * (23 + 29 + 23 * 29)  # input, output, weight (no bias)


def two_layer_graph(detached=0):
    graph = ChannelGraph("g", "torch", (13, 17, 19), detached_params={"aux": detached} if detached else None)
    graph.add_op("x", Kind.INPUT, out_channels=13, out_spatial=(17, 19))
    graph.add_op("conv", Kind.CONV, in_channels=13, out_channels=23, kernel=(3, 3), groups=1,
                 in_spatial=(17, 19), out_spatial=(17, 19), bias=True, params=3 * 3 * 13 * 23 + 23)
    graph.add_op("squeeze", Kind.IDENTITY, in_channels=23, out_channels=23)
    graph.add_op("fc", Kind.LINEAR, in_channels=23, out_channels=29, out_spatial=(), bias=False,
                 params=23 * 29)
    graph.add_op("out", Kind.OUTPUT)
    for u, v in [("x", "conv"), ("conv", "squeeze"), ("squeeze", "fc"), ("fc", "out")]:
        graph.connect(u, v)
    return graph


def test_registry_names_and_keys():
    assert RESOURCE_NAMES == ("macs", "flops", "params", "size", "bytes_moved", "latency")
    assert get_resource("latency").key == "latency_s"
    assert [r for r in RESOURCES.values() if not r.count] == [RESOURCES["latency"]]


def test_unknown_resource_names_the_choices():
    with pytest.raises(MorphScopeError, match=r"unknown resource 'joules'; choose from macs, flops, "
                                              r"params, size, bytes_moved, latency"):
        get_resource("joules")


def test_seed_totals_of_every_resource():
    model = compile_width_model(two_layer_graph(detached=7))
    totals = model.totals(model.seed_widths, get_hardware("T4"))
    assert totals["macs"] == CONV_MACS + FC_MACS
    assert totals["flops"] == 2 * (3 * 3 * 17 * 19 * 13 * 23) + 2 * (23 * 29)  # multiply + add
    assert totals["params"] == 3 * 3 * 13 * 23 + 23 + 23 * 29 + 7  # + the detached aux head
    assert totals["size"] == 3 * 3 * 13 * 23 + 23 * 29
    assert totals["bytes_moved"] == CONV_BYTES + FC_BYTES
    # T4: 8100 GFLOP/s, 300 GB/s; each op takes the slower of compute and memory.
    conv_s = max(2 * CONV_MACS / 8100e9, CONV_BYTES / 300e9)
    fc_s = max(2 * FC_MACS / 8100e9, FC_BYTES / 300e9)
    assert totals["latency_s"] == pytest.approx(conv_s + fc_s)
    assert all(type(totals[k]) is int for k in ("macs", "flops", "params", "size", "bytes_moved"))


def test_target_cost_computes_one_resource_like_the_totals():
    model = compile_width_model(two_layer_graph())
    widths = model.seed_widths.copy()
    widths[model.spaces.op_out["conv"][0].space] = 5  # 5 of 23 conv outputs alive
    assert model.target_cost(widths, "flops") == 2 * (3 * 3 * 17 * 19 * 13 * 5 + 5 * 29)
    assert model.target_cost(widths, "size") == 3 * 3 * 13 * 5 + 5 * 29


def test_latency_coefficients_are_the_two_roofline_branches():
    model = compile_width_model(two_layer_graph())
    v100 = get_hardware("V100")
    compute, memory = get_resource("latency").coefficients(model.costs, v100)
    conv = model.costs.index["conv"]
    a_in, a_out = np.array([13.0]), np.array([23.0])
    assert bilinear(compute[[conv]], a_in, a_out)[0] == pytest.approx(2 * CONV_MACS / 125000e9)
    assert bilinear(memory[[conv]], a_in, a_out)[0] == pytest.approx(CONV_BYTES / 900e9)
    squeeze = model.costs.index["squeeze"]
    assert not compute[squeeze].any() and not memory[squeeze].any()  # moves and computes nothing


def test_a_rate_branch_needs_hardware():
    with pytest.raises(MorphScopeError, match=r"peak_gflop_per_s needs a hardware; choose from \['A100'"):
        Branch("macs", 2, "peak_gflop_per_s").scale(None)


def test_totals_are_exact_python_ints_beyond_float_precision():
    # 512 ops of 2**52 + 1 MACs (each exact in float64): 2**61 + 512, which a float64 sum
    # rounds to 2**61, summed exactly.
    ops = np.full(512, 2.0 ** 52 + 1)
    assert exact_total(ops, "macs", tuple(f"op{i}" for i in range(512))) == 2 ** 61 + 512
    columns = exact_total(np.array([[2.0 ** 52, 1.0], [2.0 ** 52, 2.0]]), "macs", ("a", "b"))
    assert columns.tolist() == [2 ** 53, 3]


def test_an_op_beyond_exact_float_arithmetic_is_refused_naming_it():
    # 2**53 + 2 MACs in one op: float64 no longer holds every integer there.
    with pytest.raises(GraphError, match=r"^b: macs of 9.01e\+15 takes the count beyond 2\*\*53 for one op"):
        exact_total(np.array([1.0, 2.0 ** 53 + 2, 1.0]), "macs", ("a", "b", "c"))


def test_a_total_beyond_two_to_the_62_is_refused_naming_the_largest_op():
    # 1025 ops of 2**52 MACs: 2**62 + 2**52 in total.
    ops = np.full(1025, 2.0 ** 52)
    ops[7] = 2.0 ** 53
    with pytest.raises(GraphError, match=r"^op7: macs of 9.01e\+15 takes the count beyond 2\*\*62 in total"):
        exact_total(ops, "macs", tuple(f"op{i}" for i in range(1025)))


def crafted_graph(op, **changes):
    """A graph with absurd sizes on one op, as a bug in an importer could make it (graph JSON
    files with such sizes are refused when read: tests/ground/test_graph.py)."""
    graph = two_layer_graph()
    graph.nx.nodes[op].update(changes)
    return graph


@pytest.mark.parametrize("op, changes, why", [
    # 2**62 * 17*19*13*23 MACs: would wrap an int64.
    ("conv", {"kernel": (2 ** 31, 2 ** 31)}, "beyond 2\\*\\*53 for one op"),
    # Past float range, in the rule's own arithmetic.
    ("conv", {"kernel": (10 ** 200, 10 ** 200)}, "overflow"),
    # Past float range in integer coefficients (an opaque op's matrix product).
    ("squeeze", {"kind": Kind.OPAQUE, "matmuls": [(1, 10 ** 200, 10 ** 200, 1)]}, "overflow"),
])
def test_crafted_graph_with_absurd_sizes_is_refused_in_one_line(op, changes, why):
    graph = crafted_graph(op, **changes)
    with pytest.raises(GraphError, match=f"^{op}: .*{why}") as err:
        compile_costs(graph)
    assert "\n" not in str(err.value)


def test_solve_with_an_unreachable_budget_is_refused():
    model = compile_width_model(two_layer_graph())
    # Even one channel per prunable space costs 2*(3*3*17*19*13*1 + 1*29) FLOPs > 100.
    with pytest.raises(MorphScopeError, match=r"no width multiplier meets the flops budget 100: "
                                              r"even one channel per space costs more"):
        solve_multiplier(model, model.seed_widths, "flops", budget=100)


def test_solve_finds_the_largest_multiplier_within_budget():
    model = compile_width_model(two_layer_graph())
    # Only the conv's 23 outputs scale: size(w) = 3*3*13*n + n*29 = 146 n, n = floor(23 w).
    # Budget 146 * 46 allows n = 46, i.e. w in [2, 47/23): the solver returns w just under 47/23.
    factor = solve_multiplier(model, model.seed_widths, "size", budget=146 * 46)
    assert 46 / 23 <= factor < 47 / 23
    assert 47 / 23 - factor <= 1e-4


def test_many_width_vectors_are_costed_in_chunks_with_the_same_totals(monkeypatch):
    from morphscope.analyzers import widths as widths_module

    model = compile_width_model(two_layer_graph())
    conv_space = model.spaces.op_out["conv"][0].space
    grid = np.repeat(model.seed_widths[:, None], 3, axis=1)
    grid[conv_space] = [1, 2, 3]  # the conv keeps 1, 2, then 3 outputs
    monkeypatch.setattr(widths_module, "CHUNK_ELEMENTS", 5)  # 5 ops: one column per chunk
    expected = [3 * 3 * 17 * 19 * 13 * n + n * 29 for n in (1, 2, 3)]  # conv + fc MACs
    assert model.totals(grid)["macs"].tolist() == expected
    assert model.target_cost(grid, "macs").tolist() == expected
