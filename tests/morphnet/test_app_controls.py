"""The explorer's counting controls: convention, prunable outputs, output boundary (AppTest)."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from morphscope.analyzers.conventions import Scope
from morphscope.analyzers.hardware import get_hardware
from morphscope.analyzers.widths import compile_width_model
from morphscope.explorer import state
from morphscope.explorer.views.common import plain
from morphscope.importers.load import load_model

APP = str(Path(__file__).resolve().parents[2] / "app.py")
V100 = get_hardware("V100")


def test_convention_and_boundary_controls_change_the_seed_numbers():
    graph = load_model("example:digits")
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception
    at.selectbox(key=state.CONVENTION).set_value("morph-net").run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value.set_index("structure")
    morphnet = compile_width_model(graph, "morph-net")
    seed = morphnet.totals(morphnet.seed_widths, V100)
    # morph-net's latency bytes (a depthwise kernel as kh*kw*a_in*a_out, no bias) differ from
    # physical ones; FLOPs of this net do not (no flatten, no dense on a map).
    physical = compile_width_model(graph)
    assert table.loc["seed", "latency_s"] == pytest.approx(seed["latency_s"])
    assert seed["latency_s"] != pytest.approx(physical.totals(physical.seed_widths, V100)["latency_s"])
    assert table.loc["seed", "flops"] == seed["flops"]
    # The stem alone analysed: every structure keeps the rest of the network at full width.
    stem = next(n for n, a in graph.ops() if a["kind"].value == "bn")
    at.text_input(key=state.OUTPUT_BOUNDARY).set_value(stem).run()
    assert not at.exception and not at.error
    scoped = compile_width_model(graph, "morph-net", Scope(outputs=(stem,)))
    assert int(scoped.spaces.pinned.sum()) > int(morphnet.spaces.pinned.sum())
    at.text_input(key=state.OUTPUT_BOUNDARY).set_value("no_such_op").run()
    assert not at.exception
    assert plain("boundary 'no_such_op' is not an op of the model") in at.error[0].value
