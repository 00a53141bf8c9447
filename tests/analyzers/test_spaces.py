"""Channel rules and spaces: registry wiring, declared properties, and the layouts of ops the
zoo tests rarely isolate (opaque ops, split, channel shuffle, Keras flatten, depthwise
multiplier, transposed convs). Graphs are drawn above each test; sizes are odd so a swapped
axis fails."""

import numpy as np
import pytest

from morphscope.analyzers.cost import COST_RULES
from morphscope.analyzers.spaces import (CHANNEL_RULES, ChannelRule, Segment, build_channel_spaces,
                                         residual_branches)
from morphscope.analyzers.widths import compile_width_model
from morphscope.graph import SOURCE_KINDS, ChannelGraph, Kind, is_depthwise, opens_space


def chain(framework="torch", *ops):
    """A graph from ``(name, kind, attrs, inputs)`` tuples, ports in input order."""
    graph = ChannelGraph("g", framework, (3, 17, 19))
    for order, (name, kind, attrs, inputs) in enumerate(ops):
        graph.add_op(name, kind, order=order, **attrs)
        for port, src in enumerate(inputs):
            graph.connect(src, name, port)
    return graph


def conv(cin, cout, groups=1, **extra):
    return dict(in_channels=cin, out_channels=cout, groups=groups, kernel=(3, 3),
                in_spatial=(17, 19), out_spatial=(17, 19), bias=False, **extra)


def test_every_kind_is_in_every_kind_registry():
    assert set(CHANNEL_RULES) == set(Kind)
    assert set(COST_RULES) == set(Kind)
    assert all(rule.kind is kind for kind, rule in CHANNEL_RULES.items())


def test_rules_declare_their_properties():
    assert {k for k, r in CHANNEL_RULES.items() if r.is_source} == {Kind.CONV, Kind.LINEAR} == SOURCE_KINDS
    assert {k for k, r in CHANNEL_RULES.items() if r.ties_inputs} == {Kind.ADD, Kind.MUL}
    assert {k for k, r in CHANNEL_RULES.items() if r.channel_weights} == {Kind.CONV, Kind.LINEAR, Kind.BN}
    assert CHANNEL_RULES[Kind.BN].passthrough and CHANNEL_RULES[Kind.ACT].passthrough
    assert not CHANNEL_RULES[Kind.CONCAT].passthrough


def test_depthwise_and_space_opening_predicates():
    assert is_depthwise({"kind": Kind.CONV, "groups": 13, "in_channels": 13})
    assert not is_depthwise({"kind": Kind.CONV, "groups": 13, "in_channels": 26})  # grouped
    assert not is_depthwise({"kind": Kind.LINEAR, "groups": 13, "in_channels": 13})
    assert opens_space({"kind": Kind.CONV, "groups": 13, "in_channels": 26})
    assert not opens_space({"kind": Kind.ACT})


def test_registry_calls_an_extra_rule():
    # x -> conv -> act: the act rule is replaced by a sentinel that passes the input through.
    graph = chain("torch", ("x", Kind.INPUT, {"out_channels": 3}, ()),
                  ("conv", Kind.CONV, conv(3, 13), ("x",)),
                  ("act", Kind.ACT, {"out_channels": 13}, ("conv",)))
    seen = []

    def sentinel(builder, name, attrs, inputs):
        seen.append(name)
        return inputs[0]

    spaces = build_channel_spaces(graph, {**CHANNEL_RULES, Kind.ACT: ChannelRule(Kind.ACT, sentinel)})
    assert seen == ["act"]
    assert spaces.op_out["act"] == spaces.op_out["conv"]


def test_passthrough_and_tying_rules_do_what_they_declare():
    # x -> a(13) -> bn -> add <- b(13) <- x
    graph = chain("torch", ("x", Kind.INPUT, {"out_channels": 3}, ()),
                  ("a", Kind.CONV, conv(3, 13), ("x",)),
                  ("bn", Kind.BN, {"out_channels": 13}, ("a",)),
                  ("b", Kind.CONV, conv(3, 13), ("x",)),
                  ("add", Kind.ADD, {"out_channels": 13}, ("bn", "b")))
    spaces = build_channel_spaces(graph)
    assert spaces.op_out["bn"] == spaces.op_out["a"]  # passthrough
    assert spaces.op_out["a"] == spaces.op_out["b"] == spaces.op_out["add"]  # tied
    assert spaces.writers[spaces.op_out["add"][0].space] == ["a", "b"]


def test_opaque_op_pins_what_it_reads_and_writes():
    # x -> a(13) -> opaque(13) -> b(23) -> c(29) -> out
    graph = chain("torch", ("x", Kind.INPUT, {"out_channels": 3}, ()),
                  ("a", Kind.CONV, conv(3, 13), ("x",)),
                  ("weird", Kind.OPAQUE, {"out_channels": 13, "op": "aten.mystery"}, ("a",)),
                  ("b", Kind.CONV, conv(13, 23), ("weird",)),
                  ("c", Kind.CONV, conv(23, 29), ("b",)),
                  ("out", Kind.OUTPUT, {}, ("c",)))
    spaces = build_channel_spaces(graph)
    a, weird, b = (spaces.op_out[n][0].space for n in ("a", "weird", "b"))
    assert spaces.pinned[a] and spaces.pinned[weird]
    assert "opaque op weird (aten.mystery)" in spaces.pin_reasons[a]
    assert not spaces.pinned[b]  # b's own output is free
    # Pinned spaces keep their width under a width multiplier.
    model = compile_width_model(graph)
    from morphscope.analyzers.widths import apply_multiplier

    grown = apply_multiplier(model.spaces, model.seed_widths, 2.0)
    assert grown[a] == 13 and grown[b] == 2 * 23


def towers():
    # x -> a(13) -+-> cat(20) -> split(offset 13, 7) -> head(29)
    #   -> b(7)  -+
    return [("x", Kind.INPUT, {"out_channels": 3}, ()),
            ("a", Kind.CONV, conv(3, 13), ("x",)),
            ("b", Kind.CONV, conv(3, 7), ("x",)),
            ("cat", Kind.CONCAT, {"out_channels": 20}, ("a", "b"))]


def test_split_of_whole_segments_follows_the_space():
    graph = chain("torch", *towers(),
                  ("split", Kind.SPLIT, {"out_channels": 7, "channel_offset": 13}, ("cat",)),
                  ("head", Kind.CONV, conv(7, 29), ("split",)))
    spaces = build_channel_spaces(graph)
    assert spaces.op_out["split"] == spaces.op_out["b"]
    assert not spaces.pinned[spaces.op_out["b"][0].space]


def test_split_through_a_space_pins_it():
    graph = chain("torch", *towers(),
                  ("split", Kind.SPLIT, {"out_channels": 10, "channel_offset": 5}, ("cat",)),
                  ("head", Kind.CONV, conv(10, 29), ("split",)))
    spaces = build_channel_spaces(graph)
    assert spaces.pinned[spaces.op_out["a"][0].space]
    assert "split split cuts through a space" in spaces.pin_reasons[spaces.op_out["a"][0].space]


def test_channel_shuffle_pins_the_shuffled_space():
    import torch
    from torch import nn

    from morphscope.importers.torch_importer import load_module

    class Shuffle(nn.Module):  # ShuffleNet's channel shuffle between two convs
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 5, 1)

        def forward(self, x):
            x = self.a(x)
            n, c, h, w = x.shape
            return self.b(x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w))

    graph = load_module(Shuffle().eval(), (3, 7, 9), name="shuffle")
    spaces = compile_width_model(graph).spaces
    shuffled = spaces.op_out["a"][0].space
    assert spaces.pinned[shuffled]  # a permutation the rules cannot follow: never pruned
    assert "changes the channels" in spaces.pin_reasons[shuffled]
    assert torch.is_tensor(Shuffle()(torch.zeros(1, 3, 7, 9)))


def flatten_graph(framework):
    # x -> conv(3->4, 2x3 map) -> flatten(24) -> fc(24->5) -> out
    return chain(framework, ("x", Kind.INPUT, {"out_channels": 3}, ()),
                 ("conv", Kind.CONV, dict(conv(3, 4), in_spatial=(2, 3), out_spatial=(2, 3)), ("x",)),
                 ("flat", Kind.FLATTEN, {"out_channels": 24}, ("conv",)),
                 ("fc", Kind.LINEAR, {"in_channels": 24, "out_channels": 5, "bias": False}, ("flat",)),
                 ("out", Kind.OUTPUT, {}, ("fc",)))


@pytest.mark.parametrize("framework, interleave, alive_inputs", [
    # PyTorch: channel c feeds the contiguous block 6c .. 6c+5 of the linear.
    ("torch", "block", [6, 7, 8, 9, 10, 11, 18, 19, 20, 21, 22, 23]),
    # Keras (channels last): channel c feeds inputs c, c+4, c+8, ..., c+20.
    ("keras", "tile", [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]),
])
def test_flatten_into_a_linear_follows_each_framework_layout(framework, interleave, alive_inputs):
    from morphscope.exporters.rebuild import layout_indices

    model = compile_width_model(flatten_graph(framework))
    spaces = model.spaces
    conv_space = spaces.op_out["conv"][0].space
    assert spaces.op_in["fc"] == (Segment(conv_space, 6, interleave),)
    # Channels 1 and 3 of 4 alive: the linear keeps 2 x 6 pixels = 12 inputs.
    masks = [np.ones(int(n), dtype=bool) for n in spaces.sizes]
    masks[conv_space] = np.array([False, True, False, True])
    assert layout_indices(spaces.op_in["fc"], masks, spaces.sizes).tolist() == alive_inputs
    widths = model.seed_widths.copy()
    widths[conv_space] = 2
    fc = model.costs.index["fc"]
    assert model.per_op(widths)["macs"][fc] == 2 * 6 * 5  # alive channels x pixels x outputs


def test_depthwise_multiplier_two_repeats_each_channel():
    # x -> a(3->13) -> dw(groups 13, 13->26) -> pw(26->29): dw output channel 2j, 2j+1 read j.
    graph = chain("torch", ("x", Kind.INPUT, {"out_channels": 3}, ()),
                  ("a", Kind.CONV, conv(3, 13), ("x",)),
                  ("dw", Kind.CONV, conv(13, 26, groups=13), ("a",)),
                  ("pw", Kind.CONV, dict(conv(26, 29), kernel=(1, 1)), ("dw",)))
    model = compile_width_model(graph)
    a = model.spaces.op_out["a"][0].space
    assert model.spaces.op_out["dw"] == (Segment(a, 2, "block"),)
    assert "dw" not in model.spaces.source_ops
    widths = model.seed_widths.copy()
    widths[a] = 5  # 5 of a's 13 channels alive -> 10 of dw's 26
    per_op = model.per_op(widths)
    rows = model.costs.index
    assert per_op["macs"][rows["dw"]] == 3 * 3 * 17 * 19 * 10  # kh*kw*H*W*alive outputs
    assert per_op["params"][rows["dw"]] == 3 * 3 * 10
    assert per_op["macs"][rows["pw"]] == 17 * 19 * 10 * 29
    assert model.source_widths(widths) == {"a": 5, "pw": 29}


def test_transposed_conv_opens_a_space_and_costs_per_input_pixel():
    # x(3, 5x7) -> up: transposed 2x2 stride 2 (3->13, 10x14) -> c(13->23)
    graph = chain("torch", ("x", Kind.INPUT, {"out_channels": 3}, ()),
                  ("up", Kind.CONV, dict(in_channels=3, out_channels=13, groups=1, kernel=(2, 2),
                                         in_spatial=(5, 7), out_spatial=(10, 14), bias=False,
                                         transposed=True), ("x",)),
                  ("c", Kind.CONV, dict(conv(13, 23), in_spatial=(10, 14), out_spatial=(10, 14)), ("up",)))
    model = compile_width_model(graph)
    assert model.spaces.op_out["up"] != model.spaces.op_in["up"]
    per_op = model.per_op(model.seed_widths)
    up = model.costs.index["up"]
    # Each of the 5*7 input pixels scatters a 2x2 kernel for every (in, out) pair.
    assert per_op["macs"][up] == 2 * 2 * 5 * 7 * 3 * 13
    # Bytes (float32): read the 5x7x3 input, write the 10x14x13 output, read the kernel.
    assert per_op["bytes_moved"][up] == 4 * (5 * 7 * 3 + 10 * 14 * 13 + 2 * 2 * 3 * 13)


def test_residual_branches_of_a_two_unit_stack():
    #  x -> s -+-> u1a -> u1b -> add1 -+-> u2a -> add2
    #          +------------------^    +-------^       (identity shortcuts)
    graph = chain("torch", ("x", Kind.INPUT, {"out_channels": 3}, ()),
                  ("s", Kind.CONV, conv(3, 13), ("x",)),
                  ("u1a", Kind.CONV, conv(13, 11), ("s",)),
                  ("u1b", Kind.CONV, conv(11, 13), ("u1a",)),
                  ("add1", Kind.ADD, {"out_channels": 13}, ("u1b", "s")),
                  ("u2a", Kind.CONV, conv(13, 13), ("add1",)),
                  ("relu", Kind.ACT, {"out_channels": 13}, ("add1",)),
                  ("add2", Kind.ADD, {"out_channels": 13}, ("u2a", "relu")))
    # add2's second input (a relu of the shortcut) holds no conv: not a branch.
    assert residual_branches(graph) == {"add1": {"u1b": ("u1a", "u1b")}, "add2": {"u2a": ("u2a",)}}


def test_dead_tower_and_zero_width_layer_are_reported():
    from morphscope.analyzers.alive import topology_report

    # x -> a(13) -+-> cat(20) -> head(29); b's 7 channels all dead.
    #   -> b(7)  -+
    graph = chain("torch", *towers(), ("head", Kind.CONV, dict(conv(20, 29), kernel=(1, 1)), ("cat",)))
    model = compile_width_model(graph)
    widths = model.seed_widths.copy()
    widths[model.spaces.op_out["b"][0].space] = 0
    topology = topology_report(graph, model.spaces, widths)
    assert topology.dead_towers == (("cat", "b"),)
    assert topology.zero_width == ("b",)
    assert topology.removable_blocks == ()
    # The head reads only a's 13 alive channels: 1*1*17*19*13*29 MACs.
    assert model.per_op(widths)["macs"][model.costs.index["head"]] == 17 * 19 * 13 * 29
