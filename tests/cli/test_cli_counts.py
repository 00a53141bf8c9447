"""Counts never wrap (issue 15): huge counts print exactly, absurd ones are refused in one line."""

import json

from morphscope.cli.main import main
from morphscope.graph import ChannelGraph, Kind
from test_cli_outputs import cli_error

SIDE = 1023  # odd sizes: every bit of the counts is set somewhere


def huge_graph(path, wide_convs, C):
    """x -> stem (3x3, 3 -> C) -> ``wide_convs`` x (1x1, C -> C) -> global pool -> fc (C -> 7)."""
    spatial = (SIDE, SIDE)
    graph = ChannelGraph("huge", "torch", (3, *spatial))
    graph.add_op("x", Kind.INPUT, out_channels=3, out_spatial=spatial)
    chain = [graph.add_op("stem", Kind.CONV, in_channels=3, out_channels=C, groups=1, kernel=(3, 3),
                          stride=(1, 1), in_spatial=spatial, out_spatial=spatial, bias=False,
                          params=27 * C, trainable_params=27 * C)]
    for i in range(wide_convs):
        chain.append(graph.add_op(f"wide{i}", Kind.CONV, in_channels=C, out_channels=C, groups=1,
                                  kernel=(1, 1), stride=(1, 1), in_spatial=spatial,
                                  out_spatial=spatial, bias=False, params=C * C,
                                  trainable_params=C * C))
    chain.append(graph.add_op("pool", Kind.GLOBAL_POOL, in_channels=C, out_channels=C,
                              in_spatial=spatial, out_spatial=(1, 1)))
    chain.append(graph.add_op("fc", Kind.LINEAR, in_channels=C, out_channels=7, bias=False,
                              params=7 * C, trainable_params=7 * C))
    chain.append(graph.add_op("out", Kind.OUTPUT))
    for src, dst in zip(["x", *chain], chain):
        graph.connect(src, dst)
    path.write_text(graph.to_json())
    return path


def test_counts_past_int32_print_exactly(capsys, tmp_path):
    C = 2**14 + 1
    path = huge_graph(tmp_path / "huge.json", wide_convs=1, C=C)
    # stem 3*3*H*W*3*C + wide 1*1*H*W*C*C + fc C*7: about 2**48, past int32, float64-exact.
    macs = 9 * SIDE * SIDE * 3 * C + SIDE * SIDE * C * C + C * 7
    assert 2**47 < macs < 2**53
    params = 27 * C + C * C + 7 * C
    assert main(["report", str(path)]) == 0
    totals = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()
              if line.startswith(("MACs:", "FLOPs:", "Params:"))}
    assert totals == {"MACs:": f"{macs:,}", "FLOPs:": f"{2 * macs:,}", "Params:": f"{params:,}"}
    assert main(["report", str(path), "--json"]) == 0
    seed = json.loads(capsys.readouterr().out)["seed"]
    assert (seed["macs"], seed["flops"], seed["params"]) == (macs, 2 * macs, params)


def test_counts_that_would_wrap_int64_are_refused(capsys, tmp_path):
    # Eight convs of about 2**60 MACs: over 2**63, past what an int64 sum holds (it wraps to
    # negative numbers such as -9,223,372,036,854,775,808).
    path = huge_graph(tmp_path / "wrapping.json", wide_convs=8, C=2**20)
    line = cli_error(capsys, "report", path)
    assert "beyond 2**53 for one op" in line and "-9,223" not in line
