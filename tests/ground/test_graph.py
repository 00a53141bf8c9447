"""The ChannelGraph contract: building, ordering, JSON round trip."""

import json

import pytest

from morphscope.graph import ChannelGraph, Kind


def small_graph():
    #  x -> conv -> bn -+-> add -> out
    #                   |   ^
    #        x ---------+---+ (shortcut)
    graph = ChannelGraph("demo", "torch", (3, 17, 19), detached_params={"aux": 7})
    graph.add_op("x", Kind.INPUT, order=0, out_channels=3, out_spatial=(17, 19))
    graph.add_op("conv", Kind.CONV, order=1, in_channels=3, out_channels=3, kernel=(3, 3),
                 stride=(1, 1), out_spatial=(17, 19), groups=1, bias=False, params=81)
    graph.add_op("bn", Kind.BN, order=2, out_channels=3, gamma_key="bn.weight", params=6)
    graph.add_op("add", Kind.ADD, order=3, out_channels=3)
    graph.add_op("out", Kind.OUTPUT, order=4)
    graph.connect("x", "conv")
    graph.connect("conv", "bn")
    graph.connect("bn", "add", 0)
    graph.connect("x", "add", 1)
    graph.connect("add", "out")
    return graph


def test_ops_come_in_topological_order():
    assert [name for name, _ in small_graph().ops()] == ["x", "conv", "bn", "add", "out"]


def test_inputs_are_ordered_by_port():
    assert small_graph().inputs_of("add") == ["bn", "x"]


def test_json_round_trip_keeps_everything():
    graph = small_graph()
    text = graph.to_json()
    back = ChannelGraph.from_json(text)
    assert back.to_json() == text
    assert back["conv"]["kernel"] == (3, 3)  # tuples come back as tuples
    assert back["bn"]["kind"] is Kind.BN
    assert back.detached_params == {"aux": 7}
    assert back.input_shape == (3, 17, 19)
    assert json.loads(text)["format"] == "morphscope.channel_graph"


def test_duplicate_op_name_is_refused():
    graph = small_graph()
    with pytest.raises(ValueError, match="duplicate op name 'conv'"):
        graph.add_op("conv", Kind.CONV)


def test_of_kind_lists_ops_in_order():
    assert small_graph().of_kind(Kind.CONV, Kind.BN) == ["conv", "bn"]


def test_real_model_round_trips():
    from morphscope.importers.torch_importer import load_torchvision

    graph = load_torchvision("mobilenet_v3_small")
    back = ChannelGraph.from_json(graph.to_json())
    assert list(back.nx.nodes(data=True)) == list(graph.nx.nodes(data=True))
    assert sorted(back.nx.edges(data="port")) == sorted(graph.nx.edges(data="port"))


def test_order_is_cached_and_recomputed_after_a_change():
    graph = small_graph()
    first = graph.order()
    assert graph.order() is first  # cached: no second sort
    graph.add_op("late", Kind.ACT, order=-1, out_channels=3)  # a new op with no inputs sorts first
    assert graph.order()[0] == "late"
    graph.connect("out", "late")
    assert graph.order()[-1] == "late" and graph.position("late") == 5


def saved(**changes):
    doc = json.loads(small_graph().to_json())
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize("text, message", [
    ("{not json", r"^m.json: not JSON \("),
    (json.dumps({"nodes": []}), r"^m.json: not a MorphScope channel graph \(no \"format\""),
    (saved(version=2), r"^m.json: channel graph format version 2; this MorphScope reads version 1$"),
    (saved(nodes=[{"name": "x", "out_channels": 3}]), r"^m.json: channel graph lacks the field 'kind' \(op 'x'\)$"),
    (saved(nodes=[{"name": "x", "kind": "softmax"}]), r"^m.json: malformed channel graph \("),
    (saved(edges=[["x", "ghost", 0]]), r"^m.json: an edge names the op 'ghost', which the graph does not have$"),
    (saved(edges=[["x", "conv", 0], ["conv", "x", 0]]), r"^m.json: the channel graph has a cycle$"),
    (saved(framework="jax"), r"^m.json: malformed channel graph \(name must be a string and framework one of \['torch', 'keras'\]\)$"),
    (saved(input_shape=[3, 0, 19]), r"^m.json: malformed channel graph \(input_shape must be a list of integers in \[1, 2\*\*62\)\)$"),
    (saved(nodes={}), r"^m.json: malformed channel graph \(nodes and edges must be lists\)$"),
    (saved(detached_params={"aux": -7}), r"^m.json: malformed channel graph \(detached_params must map names to integers in \[0, 2\*\*62\)\)$"),
    (saved(notes="captured"), r"^m.json: malformed channel graph \(notes must be a list\)$"),
    (saved(nodes=[{"kind": "conv"}]), r"^m.json: malformed channel graph \(every node needs a string name\)$"),
    (saved(nodes=[{"name": "x", "kind": "conv", "out_channels": -13}]),
     r"^m.json: malformed channel graph \(op 'x': out_channels must be an integer in \[0, 2\*\*62\)\)$"),
    (saved(nodes=[{"name": "x", "kind": "conv", "params": 2**62}]),  # over what a count may hold
     r"^m.json: malformed channel graph \(op 'x': params must be an integer in \[0, 2\*\*62\)\)$"),
    (saved(nodes=[{"name": "x", "kind": "conv", "kernel": [3, "3"]}]),
     r"^m.json: malformed channel graph \(op 'x': kernel must be a list of integers in \[0, 2\*\*62\)\)$"),
    (saved(edges=[["x", "conv"]]), r"^m.json: malformed channel graph \(edge \['x', 'conv'\]: expected \[source, target, port\]\)$"),
])
def test_bad_graph_json_is_one_unsupported_file_line(text, message):
    from morphscope.errors import UnsupportedFileError

    with pytest.raises(UnsupportedFileError, match=message) as err:
        ChannelGraph.from_json(text, "m.json")
    assert "\n" not in str(err.value)


def test_duplicate_op_in_graph_json_is_refused():
    from morphscope.errors import UnsupportedFileError

    doc = json.loads(small_graph().to_json())
    doc["nodes"].append(dict(doc["nodes"][1]))
    with pytest.raises(UnsupportedFileError, match=r"^m.json: duplicate op name 'conv'$"):
        ChannelGraph.from_json(json.dumps(doc), "m.json")
