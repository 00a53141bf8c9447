"""A 20,000-op residual stack through import (graph JSON), compile, cost and topology: linear
structures (sparse op x space matrices, bounded branch searches) keep it to seconds."""

import time

import numpy as np

from morphscope.analyzers.alive import topology_report
from morphscope.analyzers.widths import compile_width_model, multiplier_curve
from morphscope.graph import ChannelGraph
from morphscope.analyzers.synthetic import conv_stack

BLOCKS = 3333  # 6 ops each, + input, stem, output: 20,001 ops


def residual_stack():
    #  x -> stem -+-> u0.a.conv -> a.bn -> a.relu -> b.conv -> b.bn -> u0.add -+-> ... -> out
    #             +-------------------------------------------------------------^
    return conv_stack("residual", 3 + 6 * BLOCKS)


def test_twenty_thousand_ops_import_compile_cost_and_topology_in_seconds():
    text = residual_stack().to_json()
    start = time.perf_counter()
    graph = ChannelGraph.from_json(text, "stack.json")
    model = compile_width_model(graph)
    totals = model.totals(model.seed_widths)
    curve = multiplier_curve(model, model.seed_widths, np.linspace(0.5, 2.0, 31))
    widths = model.seed_widths.copy()
    inner = model.spaces.op_out["u7.a.conv"][0].space
    widths[inner] = 0  # block 7's inner conv dies: its branch becomes removable
    topology = topology_report(graph, model.spaces, widths)
    elapsed = time.perf_counter() - start

    assert len(graph) == 3 + 6 * BLOCKS
    # Every add ties the stem and each block's b.conv into one space; each a.conv has its own.
    assert model.spaces.n_spaces == 1 + 1 + BLOCKS  # input, residual stream, inner spaces
    stream = model.spaces.op_out["u0.add"][0].space
    assert model.spaces.op_out[f"u{BLOCKS - 1}.add"][0].space == stream
    assert len(model.spaces.writers[stream]) == 1 + BLOCKS  # stem + every b.conv
    # MACs: stem 3x3x8x8x3x16, then two 3x3x8x8x16x16 convs per block.
    assert totals["macs"] == 9 * 64 * 3 * 16 + BLOCKS * 2 * 9 * 64 * 16 * 16
    assert curve["macs"].shape == (31,)
    # One branch per add, each holding its own five ops; the dead one is found.
    assert len(model.spaces.residual_branches) == BLOCKS
    assert model.spaces.residual_branches["u5.add"] == {
        "u5.b.bn": ("u5.a.conv", "u5.a.bn", "u5.a.relu", "u5.b.conv", "u5.b.bn")}
    assert [(add, end) for add, end, _ in topology.removable_blocks] == [("u7.add", "u7.b.bn")]
    # Sparse matrices: entries grow with the ops, not with ops x spaces.
    assert model.m_in.nnz <= len(graph) and model.m_out.nnz <= len(graph)
    assert elapsed < 60  # a few seconds on a quiet 2-core machine; generous for a loaded CI
