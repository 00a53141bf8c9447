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
    graph.add_op("relu", Kind.ACT, in_channels=23, out_channels=23)
    graph.connect("x", "conv")
    graph.connect("conv", "relu")
    return graph


def test_roofline_latency_is_max_of_compute_and_memory():
    doc = seed_report(one_conv_graph())
    flops = 2 * 3 * 3 * 17 * 19 * 13 * 23
    # float32 bytes: input map + output map + kernel.
    bytes_moved = 4 * (17 * 19 * 13 + 17 * 19 * 23 + 3 * 3 * 13 * 23)
    assert doc["seed"]["bytes_moved"] == bytes_moved
    v100 = max(flops / 125000e9, bytes_moved / 900e9)
    k80 = max(flops / 8740e9, bytes_moved / 480e9)
    assert doc["seed"]["latency_s"]["V100"] == pytest.approx(v100)
    assert doc["seed"]["latency_s"]["K80"] == pytest.approx(k80)


def test_rows_list_computing_ops_only_unless_asked():
    assert [r["name"] for r in seed_report(one_conv_graph())["layers"]] == ["conv"]
    every = seed_report(one_conv_graph(), every_op=True)["layers"]
    assert [r["name"] for r in every] == ["x", "conv", "relu"]
