"""The explorer driven through Streamlit's AppTest: widgets by key, numbers from the analyzers."""

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from morphscope.analyzers.alive import alive_masks, alive_widths, group_scores
from morphscope.analyzers.hardware import get_hardware
from morphscope.analyzers.widths import apply_multiplier, compile_width_model
from morphscope.explorer.views.common import plain
from morphscope.importers.load import load_model

APP = str(Path(__file__).resolve().parents[2] / "app.py")
V100 = get_hardware("V100")


def expected_totals(model, gammas, threshold, factor):
    alive = alive_widths(alive_masks(model.spaces, group_scores(model.spaces, gammas), threshold))
    return model.totals(alive, V100), model.totals(apply_multiplier(model.spaces, alive, factor), V100)


def run_app():
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception
    return at


def metrics_table(at):
    return at.dataframe[0].value.set_index("structure")  # the first table is the metrics table


def test_default_example_renders_with_metrics(example):
    _, model, gammas = example
    at = run_app()
    assert not at.error
    table = metrics_table(at)
    seed = model.totals(model.seed_widths, V100)
    assert table.loc["seed", "flops"] == seed["flops"]
    assert table.loc["seed", "params"] == seed["params"]
    for label, g in gammas.items():
        alive, _ = expected_totals(model, g, 1e-2, 1.0)
        assert table.loc[f"{label} (alive)", "flops"] == alive["flops"]
        assert table.loc[f"{label} (alive)", "size"] == alive["size"]
    labels = [m.label for m in at.metric]
    assert labels[0].startswith("FLOPs") and len(at.metric) == 4
    assert at.get("plotly_chart")  # width bars, histogram, trade-off curves


def test_threshold_and_factor_change_the_numbers(example):
    _, model, gammas = example
    at = run_app()
    at.sidebar.select_slider(key="threshold").set_value(0.05).run()
    at.sidebar.slider(key="factor").set_value(1.25).run()
    assert not at.exception
    table = metrics_table(at)
    for label, g in gammas.items():
        alive, expanded = expected_totals(model, g, 0.05, 1.25)
        assert table.loc[f"{label} (alive)", "flops"] == alive["flops"]
        assert table.loc[f"{label} (expanded)", "flops"] == expanded["flops"]
        assert table.loc[f"{label} (expanded)", "params"] == expanded["params"]
        assert table.loc[f"{label} (expanded)", "latency_s"] == pytest.approx(expanded["latency_s"])


def click_match(at, target, label=None):
    if label is not None:
        at.sidebar.selectbox(key="expand_target").set_value(label).run()
    label = at.sidebar.selectbox(key="expand_target").value
    at.sidebar.button(key=f"match_{target}").click().run()
    assert not at.exception
    return label, at.sidebar.slider(key="factor").value


@pytest.mark.parametrize("target", ["flops", "size"])
@pytest.mark.parametrize("label", ["FLOPs-regularized", "size-regularized"])
def test_match_seed_lands_within_two_percent_under(example, label, target):
    _, model, gammas = example
    at = run_app()
    label, factor = click_match(at, target, label)
    seed = model.totals(model.seed_widths, V100)[target]
    _, expanded = expected_totals(model, gammas[label], 1e-2, factor)
    _, next_step = expected_totals(model, gammas[label], 1e-2, factor + 0.001)
    # Integer widths: the size-regularized net, grown 2.36x, moves in steps of about 2% of its size.
    assert 0.98 * seed <= expanded[target] <= seed
    assert next_step[target] > seed or next_step == expanded  # nothing larger fits on the slider
    assert metrics_table(at).loc[f"{label} (expanded)", target] == expanded[target]


def test_match_seed_flops_on_resnet18_within_one_percent(tmp_path):
    import io

    import torch
    import torchvision

    rng = np.random.default_rng(4)
    state = torchvision.models.resnet18().state_dict()
    for key, value in state.items():
        if key.endswith(".weight") and value.dim() == 1:
            state[key] = torch.as_tensor(rng.uniform(0, 1, value.numel()) * (rng.random(value.numel()) > 0.3),
                                         dtype=torch.float32)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    at = run_app()
    at.sidebar.radio(key="model_source").set_value("Zoo model").run()
    at.sidebar.file_uploader(key="checkpoint_uploads").upload("r18.pt", buffer.getvalue()).run()
    assert not at.exception and not at.error
    label, factor = click_match(at, "flops")
    assert label == "r18.pt"
    graph = load_model("torchvision:resnet18", (3, 224, 224))
    model = compile_width_model(graph)
    gammas = {n: state[a["gamma_key"]].numpy() for n, a in graph.ops() if a.get("gamma_key")}
    seed = model.totals(model.seed_widths, V100)["flops"]
    _, expanded = expected_totals(model, gammas, 1e-2, factor)
    assert 0.99 * seed <= expanded["flops"] <= seed
    assert metrics_table(at).loc["r18.pt (expanded)", "flops"] == expanded["flops"]


def test_bad_upload_shows_the_error_and_keeps_the_previous_model(example):
    graph, model, _ = example
    at = run_app()
    at.sidebar.radio(key="model_source").set_value("Upload a file").run()
    at.sidebar.file_uploader(key="model_upload").upload("broken.pt2", b"not a zip at all").run()
    assert not at.exception
    [error] = at.sidebar.error
    assert plain("broken.pt2: not a torch.export archive") in error.value  # shown escaped
    # The bundled example is still what the page shows.
    assert plain(graph.name) in at.caption[0].value
    assert metrics_table(at).loc["seed", "flops"] == model.totals(model.seed_widths, V100)["flops"]


def test_morphnet_alive_file_upload_is_a_structure(example):
    import json

    _, model, _ = example
    at = run_app()
    alive = {"res2.conv1.0/Conv2D": 40, "inception.branch1.0/Conv2D": 8}
    at.sidebar.file_uploader(key="checkpoint_uploads").upload(
        "alive_1200", json.dumps(alive).encode()).run()
    assert not at.exception and not at.error
    row = metrics_table(at).loc["alive_1200 (alive)"]
    # Only those two layers shrink: res2.conv1 170 -> 40 (3x3 at 4x4, 150 in; feeds res2.conv2),
    # inception.branch1 30 -> 8 (1x1 at 8x8 from 60; one of the concat inputs of the 3x3
    # depthwise (78 -> 56 channels) and the pointwise 1x1 (78 -> 56 inputs, 150 out, at 4x4).
    seed = model.totals(model.seed_widths, V100)["macs"]
    saved = (3 * 3 * 16 * 150 * (170 - 40)  # res2.conv1 outputs
             + 3 * 3 * 16 * (170 - 40) * 150  # res2.conv2 inputs
             + 1 * 1 * 64 * 60 * (30 - 8)  # branch1 outputs
             + 3 * 3 * 16 * (30 - 8)  # depthwise 3x3 stride 2 on the concat (4x4 output)
             + 1 * 1 * 16 * (30 - 8) * 150)  # pointwise inputs
    assert row["flops"] == 2 * (seed - saved)
