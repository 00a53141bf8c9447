"""Seed report: roofline latency arithmetic and table rows."""

import pytest

from morphscope.analyzers.report import seed_report
from morphscope.graph import ChannelGraph, Kind


def one_conv_graph():
    graph = ChannelGraph("g", "torch", (13, 17, 19))
    graph.add_op("x", Kind.INPUT, out_channels=13, out_spatial=(17, 19))
    graph.add_op("conv", Kind.CONV, in_channels=13, out_channels=23, kernel=(3, 3),
                 in_spatial=(17, 19), out_spatial=(17, 19), groups=1, bias=False,
                 params=3 * 3 * 13 * 23, trainable_params=3 * 3 * 13 * 23)
    graph.add_op("relu", Kind.ACT, in_channels=23, out_channels=23, in_spatial=(17, 19),
                 out_spatial=(17, 19))
    graph.connect("x", "conv")
    graph.connect("conv", "relu")
    return graph


def test_roofline_latency_is_max_of_compute_and_memory():
    doc = seed_report(one_conv_graph())
    flops = 2 * 3 * 3 * 17 * 19 * 13 * 23
    # float32 bytes: the conv's input map + output map + kernel; the relu reads and writes a map.
    conv_bytes = 4 * (17 * 19 * 13 + 17 * 19 * 23 + 3 * 3 * 13 * 23)
    relu_bytes = 4 * 2 * 17 * 19 * 23
    assert doc["seed"]["bytes_moved"] == conv_bytes + relu_bytes
    # Roofline per op: the conv takes the larger of compute and memory time, the relu memory.
    v100 = max(flops / 125000e9, conv_bytes / 900e9) + relu_bytes / 900e9
    k80 = max(flops / 8740e9, conv_bytes / 480e9) + relu_bytes / 480e9
    assert doc["seed"]["latency_s"]["V100"] == pytest.approx(v100)
    assert doc["seed"]["latency_s"]["K80"] == pytest.approx(k80)


def test_rows_list_computing_ops_only_unless_asked():
    assert [r["name"] for r in seed_report(one_conv_graph())["layers"]] == ["conv"]
    every = seed_report(one_conv_graph(), every_op=True)["layers"]
    assert [r["name"] for r in every] == ["x", "conv", "relu"]
