"""The explorer's runs, resolution and result views and the newcomer fixes, through AppTest.
Expected numbers come from the analyzers' own functions or arithmetic written here, never
from the view."""

import base64
import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from morphscope.analyzers.alive import alive_masks, alive_widths, group_scores
from morphscope.analyzers.hardware import get_hardware
from morphscope.analyzers.morph import source_op_widths
from morphscope.exporters.writers import layer_table
from morphscope.explorer.views.common import plain
from morphscope.importers.load import EXAMPLES_DIR
from morphscope.units import human_count

APP = str(Path(__file__).resolve().parents[2] / "app.py")
V100 = get_hardware("V100")
# examples/train_digits.py: output channels per source op, input to output.
SEED = {"stem.0": 28, "res1.conv1.0": 36, "res1.conv2.0": 28, "down.0": 60, "inception.branch1.0": 30,
        "inception.branch3_reduce.0": 22, "inception.branch3.0": 34, "inception.branch_pool.0": 14,
        "pointwise.0": 150, "res2.conv1.0": 170, "res2.conv2.0": 150, "fc": 10}
HIGH, LOW = ("stem.0", "res1.conv1.0", "res1.conv2.0"), ("pointwise.0", "res2.conv1.0", "res2.conv2.0")


def run_app():
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception
    return at


def figure(at, key):
    """The plotly figure drawn with ``key`` (AppTest renders nothing: read its JSON spec, with
    plotly's base64 arrays decoded to lists)."""
    [chart] = [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    return _decoded(json.loads(chart.proto.spec))


def _decoded(node):
    if isinstance(node, dict) and "bdata" in node and "dtype" in node:
        array = np.frombuffer(base64.b64decode(node["bdata"]), dtype=node["dtype"])
        shape = node.get("shape")
        return (array.reshape([int(n) for n in str(shape).split(",")]) if shape else array).tolist()
    if isinstance(node, dict):
        return {k: _decoded(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_decoded(v) for v in node]
    return node


def layer_table_on_screen(at):
    [table] = [d.value for d in at.dataframe if "resolution" in d.value.columns]
    return table


def metrics_table(at):
    return at.dataframe[0].value.set_index("structure")


def alive_of(model, gammas, threshold=1e-2):
    return alive_widths(alive_masks(model.spaces, group_scores(model.spaces, gammas), threshold))


def run_zip(runs):
    """A zip of StructureLogger-style folders: name -> {step: counts} and a val_accuracy log."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, (steps, accuracy) in runs.items():
            for step, counts in steps.items():
                archive.writestr(f"{name}/alive_{step}", json.dumps(counts))
            archive.writestr(f"{name}/cost.jsonl", "".join(
                json.dumps({"step": s, "target": "flops", "cost": 1.0, "loss": 0.5, "val_accuracy": accuracy})
                + "\n" for s in steps))
    return buffer.getvalue()


def test_a_run_steered_to_a_budget_shows_its_budget_and_strength_trace():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for step in (0, 10, 20):
            archive.writestr(f"steered/alive_{step}", json.dumps(SEED))
        # Budget: half the example seed's 27,810,552 FLOPs (the README's table).
        archive.writestr("steered/cost.jsonl", "".join(
            json.dumps({"step": s, "target": "flops", "cost": 27810552.0, "loss": 0.5, "strength": v,
                        "budget": 13905276.0}) + "\n" for s, v in ((0, 1e-9), (10, 2e-9), (20, 1.5e-9))))
    at = run_app()
    at.sidebar.file_uploader(key="run_uploads").upload("target.zip", buffer.getvalue()).run()
    assert not at.exception and not at.error
    [trace] = figure(at, "run_strengths")["data"]
    assert trace["x"] == [0, 10, 20] and trace["y"] == [1e-9, 2e-9, 1.5e-9]
    budget = [t for t in figure(at, "run_costs")["data"] if t.get("name", "").endswith(": budget")]
    assert [t["y"] for t in budget] == [[50.0, 50.0]]
    # The logger's own fields are not offered as user metrics for the sweep chart.
    from morphscope.analyzers.runs import metric_names

    assert metric_names([{"step": 0, "strength": 1e-9, "budget": 5.0, "val_accuracy": 0.9}]) == ["val_accuracy"]


def test_runs_view_steps_drive_the_page(example):
    graph, model, _ = example
    small = {**SEED, "res2.conv1.0": 40, "inception.branch1.0": 8}
    long_steps = {s: {**SEED, "res2.conv1.0": 170 - s // 10} for s in range(0, 1000)}  # 1,000 steps
    data = run_zip({"a": ({0: SEED, 100: small, 200: SEED}, 0.9), "b": (long_steps, 0.8)})
    at = run_app()
    at.sidebar.file_uploader(key="run_uploads").upload("sweep.zip", data).run()
    assert not at.exception and not at.error
    slider = at.select_slider(key="run_step_sweep/a")
    assert list(slider.options) == ["0", "100", "200"] and slider.value == 200  # the last step first
    slider.set_value(100).run()
    assert not at.exception
    seed_macs = model.totals(model.seed_widths)["macs"]
    # Hand count as in tests/analyzers/test_runs_resolution.py: res2.conv1 170 -> 40, branch1 30 -> 8.
    saved = 9 * 16 * 150 * 130 * 2 + 64 * 60 * 22 + 9 * 16 * 22 + 16 * 22 * 150
    table = metrics_table(at)
    assert table.loc["sweep/a (alive)", "flops"] == 2 * (seed_macs - saved)
    # The long run: the last step (999) has res2.conv1 at 170 - 99 = 71.
    assert table.loc["sweep/b (alive)", "flops"] == 2 * (seed_macs - 9 * 16 * 150 * 99 * 2)

    # Cards, table and downloads follow the selected structure.
    at.sidebar.selectbox(key="expand_target").set_value("sweep/a").run()
    assert at.metric[0].value == human_count(2 * (seed_macs - saved))
    assert at.subheader[0].value.startswith("Costs: sweep/a")
    assert any(h.value == "Export: sweep/a" for h in at.subheader)
    at.select_slider(key="run_step_sweep/a").set_value(200).run()  # the cards follow the step
    assert at.metric[0].value == human_count(2 * seed_macs)
    at.select_slider(key="run_step_sweep/a").set_value(100).run()
    on_screen = layer_table_on_screen(at)
    row = on_screen.set_index("layer").loc["res2.conv1.0"]
    assert (row["seed_width"], row["alive_width"], row["resolution"]) == (170, 40, "4x4")

    # Heatmap: every layer (rows) against step; the long run drawn with at most 400 columns.
    heat_a = figure(at, "run_heatmap_0")["data"][0]
    assert heat_a["y"][9] == "res2.conv1.0" and heat_a["x"] == [0, 100, 200]
    assert heat_a["z"][9] == pytest.approx([100, 100 * 40 / 170, 100])
    heat_b = figure(at, "run_heatmap_1")["data"][0]
    assert len(heat_b["x"]) <= 400 and heat_b["x"][0] == 0 and heat_b["x"][-1] == 999
    assert list(at.select_slider(key="run_step_sweep/b").options) == [str(s) for s in range(1000)]

    # Sweep: final FLOPs (share of the seed's) against the logged metric.
    points = {t["name"]: (t["x"][0], t["y"][0]) for t in figure(at, "sweep_scatter")["data"]}
    assert points["sweep/a (flops)"] == pytest.approx((100.0, 0.9))  # step 200 is the seed again; target named
    assert points["sweep/b (flops)"] == pytest.approx((100 * (seed_macs - 9 * 16 * 150 * 99 * 2) / seed_macs, 0.8))


def test_where_it_changed_views(example):
    graph, model, gammas = example
    at = run_app()
    bars = figure(at, "width_bars")["data"]
    resolutions, layers = bars[0]["x"]
    assert layers == list(SEED)
    assert [resolutions[layers.index(n)] for n in ("stem.0", "down.0", "res2.conv1.0", "fc")] == \
        ["16x16", "8x8", "4x4", "vector"]
    kept = {t["name"]: t["y"] for t in figure(at, "kept_by_resolution")["data"]}
    for label, g in gammas.items():
        widths = source_op_widths(graph, model, alive_of(model, g))
        high = sum(widths[n] for n in HIGH) / (28 + 36 + 28)
        low = sum(widths[n] for n in LOW) / (150 + 170 + 150)
        assert kept[label][0] == pytest.approx(100 * high) and kept[label][2] == pytest.approx(100 * low)
    # Hover: alive and expanded MACs, not only the seed's.
    label = next(iter(gammas))
    alive = alive_of(model, gammas[label])
    rows = {r["layer"]: r for r in layer_table(graph, model, alive, alive)}
    hover = next(t for t in bars if t["name"] == f"{label} alive")["hovertext"][layers.index("res2.conv1.0")]
    assert f"alive {human_count(rows['res2.conv1.0']['alive_macs'])}" in hover
    # The on-screen table holds the CSV export's numbers for the selected structure.
    shown = layer_table_on_screen(at)
    assert shown.drop(columns="resolution").to_dict("records") == list(rows.values())
    # The paper's chart: both families, at least 4 budgets, mean and spread from the committed runs.
    doc = json.loads((EXAMPLES_DIR / "digits" / "width_sweep.json").read_text())
    traces = figure(at, "width_sweep")["data"]
    assert len(traces) == 2 and all(len(t["x"]) >= 4 for t in traces)
    seed_points = sorted((p for p in doc["runs"] if p["family"] == "seed"), key=lambda p: p["flops"])
    first = [p["accuracy"] for p in seed_points if p["flops"] == seed_points[0]["flops"]]
    assert traces[0]["y"][0] == pytest.approx(np.mean(first))
    assert traces[0]["error_y"]["array"][0] == pytest.approx(np.std(first, ddof=1))


def test_newcomer_fixes(example):
    graph, model, gammas = example
    at = run_app()
    # Cards follow the selected structure (not always the first).
    at.sidebar.selectbox(key="expand_target").set_value("size-regularized").run()
    size_alive = model.totals(alive_of(model, gammas["size-regularized"]), V100)
    assert at.metric[0].value == human_count(size_alive["flops"])
    # Trade-off: log axes from 0.25x to 2x of the seed's FLOPs, markers explained in the legend,
    # the star for the resource matched last.
    at.sidebar.button(key="match_size").click().run()
    fig = figure(at, "tradeoff_params")
    seed_flops = model.totals(model.seed_widths)["flops"]
    assert fig["layout"]["xaxis"]["type"] == "log"
    low, high = fig["layout"]["xaxis"]["range"]
    assert low <= np.log10(0.25 * seed_flops) and high >= np.log10(2 * seed_flops)
    names = [t.get("name") for t in fig["data"]]
    assert "current factor" in names and "matches the seed's size" in names
    # every marker (current factor, matched star) inside the drawn range, none cut off
    marks = [x for t in fig["data"] if t.get("mode") == "markers" for x in t["x"]]
    assert marks and all(low <= np.log10(x) <= high for x in marks)
    # |gamma| histogram: the floor bin is labelled (threshold 0.01 / 1000).
    texts = [shape["label"]["text"] for shape in figure(at, "gamma_hist")["layout"]["shapes"]]
    assert "floor: <= 1e-05" in texts and "threshold 0.01" in texts
    # Tables: thousands separators, and headers even without rows.
    topology = [d.value for d in at.dataframe if list(d.value.columns) == ["add", "branch", "why"]]
    assert topology and all(list(t.columns) == ["add", "branch", "why"] for t in topology)


def test_zoo_box_and_uploads_keep_the_state(example):
    graph, model, _ = example
    at = run_app()
    at.sidebar.radio(key="model_source").set_value("Zoo model").run()
    at.sidebar.text_input(key="zoo_spec").set_value(str(EXAMPLES_DIR / "digits" / "seed.pt2")).run()
    assert not at.exception
    assert plain("name a zoo model as torchvision:NAME or keras:NAME") in at.sidebar.error[0].value
    assert at.caption[0].value.startswith(plain("torchvision:resnet18"))  # the zoo box's default stays
    at.sidebar.text_input(key="zoo_spec").set_value("torchvision:resnet19").run()
    closest = at.sidebar.error[0].value.split(plain("closest: "))[1].split(plain(" ("))[0].split(", ")
    assert closest[0] == "resnet18" and len(closest) <= 5  # the few closest names, not all 80
    at.sidebar.radio(key="model_source").set_value("Bundled example").run()
    # Two checkpoints of the same name: told apart, no crash; a bad one shows no server path.
    alive_a, alive_b = json.dumps({"res2.conv1.0": 40}), json.dumps({"res2.conv1.0": 60})
    kind = "application/octet-stream"
    at.sidebar.file_uploader(key="checkpoint_uploads").set_value(
        [("alive_5", alive_a.encode(), kind), ("alive_5", alive_b.encode(), kind),
         ("bad.pt", b"\x80\x02 not a pickle", kind)]).run()
    assert not at.exception
    table = metrics_table(at)
    seed_macs = model.totals(model.seed_widths)["macs"]
    assert table.loc["alive_5 (alive)", "flops"] == 2 * (seed_macs - 9 * 16 * 150 * 130 * 2)
    assert table.loc["alive_5 (2) (alive)", "flops"] == 2 * (seed_macs - 9 * 16 * 150 * 110 * 2)
    [error] = [e.value for e in at.sidebar.error]
    assert error.startswith(plain("bad.pt:")) and tempfile.gettempdir() + "/" not in error
    # A bad run upload: one line; the structures stay.
    at.sidebar.file_uploader(key="run_uploads").upload("runs.zip", b"not a zip").run()
    assert plain("runs.zip: not a readable zip archive") in " ".join(e.value for e in at.sidebar.error)
    assert "alive_5 (2) (alive)" in metrics_table(at).index


def test_a_model_without_checkpoints_gets_the_seed_tradeoff():
    at = run_app()
    at.sidebar.radio(key="model_source").set_value("Upload a file").run()
    at.sidebar.file_uploader(key="model_upload").upload(
        "seed.pt2", (EXAMPLES_DIR / "digits" / "seed.pt2").read_bytes()).run()
    assert not at.exception and not at.error
    names = [t.get("name") for t in figure(at, "tradeoff_params")["data"]]
    assert "seed" in names


def test_a_built_model_download_is_only_offered_for_what_it_was_built_from(example):
    at = run_app()
    at.button(key="build_model").click().run()
    assert not at.exception and not at.error

    def model_downloads():
        return [b.proto.label for b in at.get("download_button") if b.proto.label.startswith("Download ")]

    [label] = model_downloads()
    built_from, name, _, _ = at.session_state["model_file"]
    assert name == "digits_FLOPs-regularized_x1.000.pt2" and plain(name) in label  # example:digits
    at.sidebar.slider(key="factor").set_value(0.388).run()  # another multiplier: stale, not offered
    assert model_downloads() == []
    at.button(key="build_model").click().run()  # rebuilt for the new multiplier
    [label] = model_downloads()
    assert plain("x0.388") in label
    at.sidebar.selectbox(key="round_to").set_value(8).run()  # another rounding: stale again
    assert model_downloads() == []


def test_the_measured_panel_times_seed_and_structure_on_its_button(example):
    # The panel's numbers are timings (bench/ judges them); here: it runs on the button only,
    # shows both models with the prediction named, and goes stale with the multiplier.
    at = run_app()
    assert not [d for d in at.dataframe if "measured (median)" in d.value.columns]
    at.button(key="measure").click().run()
    assert not at.exception and not at.error
    [table] = [d.value for d in at.dataframe if "measured (median)" in d.value.columns]
    assert list(table["model"]) == ["seed", "morphed"]
    caption = next(c.value for c in at.caption if c.value.startswith("Speedup"))
    assert "threads, batch 1" in caption and "V100 roofline prediction" in caption
    at.sidebar.slider(key="factor").set_value(0.5).run()
    assert not [d for d in at.dataframe if "measured (median)" in d.value.columns]


def _upload_many(at, key, files):
    at.sidebar.file_uploader(key=key).set_value(
        [(name, data, "application/octet-stream") for name, data in files]).run()


def test_seven_checkpoints_on_one_model_all_draw():
    # Used to end in KeyError: 'g6.pt' (a six-colour palette) in the trade-off chart.
    from morphscope.importers.load import example_checkpoints

    data = example_checkpoints("example:digits")["FLOPs-regularized"].read_bytes()
    at = run_app()
    names = [f"g{i}.pt" for i in range(7)]
    _upload_many(at, "checkpoint_uploads", [(name, data) for name in names])
    assert not at.exception and not at.error
    drawn = [t["name"] for t in figure(at, "tradeoff_params")["data"] if t.get("mode") == "lines"]
    assert all(name in drawn for name in names)
    # 2 bundled checkpoints + 7 uploads, each a line of its own colour, and the seed.
    colours = {t["line"]["color"] for t in figure(at, "tradeoff_params")["data"] if t.get("mode") == "lines"}
    assert len(drawn) == 10 and len(colours) == 10


def test_five_run_zips_and_runs_of_one_name_all_draw():
    # Five zips beside the two bundled checkpoints used to end in KeyError: 'steps_4/r4' (the
    # seventh structure); a loose run and run.zip's top-level run were both called "run".
    small = {**SEED, "res2.conv1.0": 40}
    zips = [(f"steps_{i}.zip", run_zip({f"r{i}": ({0: SEED, 10 * (i + 1): small}, 0.5 + i / 10)}))
            for i in range(5)]
    top_level = io.BytesIO()
    with zipfile.ZipFile(top_level, "w") as archive:
        archive.writestr("alive_3", json.dumps(small))
    at = run_app()
    _upload_many(at, "run_uploads", [*zips, ("run.zip", top_level.getvalue()), ("alive_7", json.dumps(SEED).encode())])
    assert not at.exception and not at.error
    lines = [t["name"] for t in figure(at, "run_costs")["data"] if t.get("mode") == "lines"]
    assert lines == [*(f"steps_{i}/r{i} (flops)" for i in range(5)), "run (flops)", "run (2) (flops)"]
    assert at.select_slider(key="run_step_run").value == 3 and at.select_slider(key="run_step_run (2)").value == 7


def test_bad_run_file_names_get_one_line_and_ignored_files_a_note():
    # A 4,000-digit step used to be dropped without a word; 5,000 digits ended in
    # "ValueError: Exceeds the limit (4300 digits)".
    at = run_app()
    long_step = "alive_" + "1" * 4000
    _upload_many(at, "run_uploads", [(long_step, json.dumps(SEED).encode())])
    assert not at.exception
    [error] = at.sidebar.error
    # The name quoted as its first and last 28 characters: "alive_" and 22 digits, 28 digits.
    shown = "alive_" + "1" * 22 + "..." + "1" * 28
    assert error.value == plain(f"run/{shown}: step of 4,000 digits; steps are whole numbers up to "
                                 "1,000,000,000,000")
    kept = io.BytesIO()
    with zipfile.ZipFile(kept, "w") as archive:
        archive.writestr("r/alive_0", json.dumps(SEED))
        archive.writestr("r/notes.txt", "not a run file")
    _upload_many(at, "run_uploads", [("kept.zip", kept.getvalue())])
    assert not at.exception and not at.error
    assert [i.value for i in at.sidebar.info] == [
        plain("kept.zip: ignored 1 file(s) that are not alive_<step> files or cost.jsonl: r/notes.txt")]
