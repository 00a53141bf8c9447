"""Cost rules, checked against arithmetic written here (DESIGN section 4)."""

import numpy as np
import pytest

from morphscope.analyzers.cost import COST_RULES, ZERO_COST_KINDS, bilinear, compile_costs, seed_costs, totals_of
from morphscope.analyzers.hardware import HARDWARE, get_hardware
from morphscope.errors import MorphScopeError
from morphscope.graph import ChannelGraph, Kind


def cost_of(kind, a_in, a_out, **attrs):
    rule = COST_RULES[kind]({"kind": kind, **attrs})
    return {r: float(bilinear(np.array([[c.io, c.i, c.o, c.const]]), np.array([a_in]),
                              np.array([a_out]))[0])
            for r, c in (("macs", rule.macs), ("params", rule.params), ("size", rule.size))}


def test_every_kind_has_a_cost_rule():
    assert set(COST_RULES) == set(Kind)
    assert Kind.CONV not in ZERO_COST_KINDS and Kind.LINEAR not in ZERO_COST_KINDS


def test_linear_two_inputs_three_outputs_costs_six():
    cost = cost_of(Kind.LINEAR, 2, 3, in_channels=2, out_channels=3, out_spatial=(), bias=False)
    assert cost["macs"] == 2 * 3
    # One output channel dead: 2 inputs x 2 outputs.
    assert cost_of(Kind.LINEAR, 2, 2, out_spatial=(), bias=False)["macs"] == 2 * 2


def test_conv_macs_params_and_size():
    attrs = dict(kernel=(3, 5), out_spatial=(17, 19), in_spatial=(17, 19), groups=1, bias=True,
                 in_channels=13, out_channels=23)
    cost = cost_of(Kind.CONV, 13, 23, **attrs)
    assert cost["macs"] == 3 * 5 * 17 * 19 * 13 * 23  # kh*kw*H*W*in*out
    assert cost["params"] == 3 * 5 * 13 * 23 + 23  # kernel + bias
    assert cost["size"] == 3 * 5 * 13 * 23  # kernel only


def test_grouped_conv_divides_inputs_by_groups():
    attrs = dict(kernel=(3, 3), out_spatial=(7, 11), groups=4, bias=False, in_channels=32)
    assert cost_of(Kind.CONV, 32, 64, **attrs)["macs"] == 3 * 3 * 7 * 11 * (32 // 4) * 64


def test_depthwise_conv_is_linear_in_channels():
    attrs = dict(kernel=(3, 3), out_spatial=(17, 19), groups=29, in_channels=29, bias=False)
    cost = cost_of(Kind.CONV, 29, 29, **attrs)
    assert cost["macs"] == 3 * 3 * 17 * 19 * 29
    assert cost["params"] == 3 * 3 * 29
    # 10 channels left alive: cost scales with them, not with their square.
    assert cost_of(Kind.CONV, 10, 10, **attrs)["macs"] == 3 * 3 * 17 * 19 * 10


def test_linear_on_tokens_multiplies_by_rows():
    cost = cost_of(Kind.LINEAR, 13, 23, out_spatial=(197,), bias=True)
    assert cost["macs"] == 197 * 13 * 23
    assert cost["params"] == 13 * 23 + 23


def test_bn_params_scale_with_alive_channels():
    assert cost_of(Kind.BN, 13, 13, out_channels=13, params=2 * 13)["params"] == 2 * 13
    assert cost_of(Kind.BN, 5, 5, out_channels=13, params=2 * 13)["params"] == 2 * 5
    assert cost_of(Kind.BN, 13, 13, out_channels=13, params=2 * 13)["macs"] == 0


def test_attention_matmuls_count_as_fixed_macs():
    cost = cost_of(Kind.OPAQUE, 0, 0, matmuls=[(12, 197, 64, 197), (12, 197, 197, 64)])
    assert cost["macs"] == 12 * 197 * 64 * 197 + 12 * 197 * 197 * 64


def test_totals_flops_are_twice_macs_and_detached_params_count():
    graph = ChannelGraph("g", "torch", (3, 5, 7), detached_params={"aux": 11})
    graph.add_op("x", Kind.INPUT, out_channels=3, out_spatial=(5, 7))
    graph.add_op("conv", Kind.CONV, in_channels=3, out_channels=13, kernel=(1, 1),
                 out_spatial=(5, 7), in_spatial=(5, 7), groups=1, bias=False, params=39)
    graph.connect("x", "conv")
    model = compile_costs(graph)
    totals = totals_of(model, seed_costs(model))
    assert totals["macs"] == 5 * 7 * 3 * 13
    assert totals["flops"] == 2 * 5 * 7 * 3 * 13
    assert totals["params"] == 3 * 13 + 11


def test_hardware_table_and_unknown_name():
    assert {"K80", "P4", "T4", "P100", "V100", "TPUv2"} <= set(HARDWARE)
    assert get_hardware("V100").memory_gb_per_s == 900
    with pytest.raises(MorphScopeError, match=r"unknown hardware 'B200'; choose from \["):
        get_hardware("B200")


def test_compiled_rules_accept_extra_rules():
    graph = ChannelGraph("g", "torch", (3, 1, 1))
    graph.add_op("x", Kind.INPUT, out_channels=3)
    sentinel = {"called": []}

    def counting_rule(attrs):
        sentinel["called"].append(attrs["kind"])
        return COST_RULES[attrs["kind"]](attrs)

    compile_costs(graph, {**COST_RULES, Kind.INPUT: counting_rule})
    assert sentinel["called"] == [Kind.INPUT]
