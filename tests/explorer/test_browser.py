"""A real browser on the real app: ``streamlit run app.py`` on a free local port, Debian's
Chromium driven by Playwright (the helpers of morphscope.explorer.screenshots, which also makes
the README's pictures; this test writes only into its temporary folders). Uploads a model and a
checkpoint, moves the width slider, downloads the widths JSON and checks it against the
analyzers; uploads a training run made by a short training, moves its step selector and checks
that the width bars and the cost cards follow."""

import io
import json
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

import handbuilt
from handbuilt import H, W, alive_at
from morphscope.analyzers.alive import alive_masks, alive_widths, group_scores
from morphscope.analyzers.morph import source_op_widths, widths_from_counts
from morphscope.analyzers.widths import apply_multiplier, compile_width_model
from morphscope.explorer.screenshots import open_page, serve_app, wait_idle
from morphscope.explorer.views.common import plain
from morphscope.exporters.writers import widths_json
from morphscope.importers.checkpoints import load_structure
from morphscope.importers.load import EXAMPLES_DIR, load_model
from morphscope.units import human_count


@pytest.fixture(scope="module")
def app():
    """One server and one browser for the module (the slow part to start). The first page warms
    the server's caches on the bundled example and is closed; tests open their own pages."""
    with serve_app() as url, open_page(url) as first:
        first.get_by_text("Layer widths").wait_for()
        wait_idle(first)
        context = first.context
        first.close()
        yield url, context


@pytest.fixture
def page(app):
    """A fresh page, so a fresh Streamlit session: each test starts from the app's default state
    (the bundled example drawn, no uploads, the what-if multiplier at its default)."""
    url, context = app
    page = context.new_page()
    page.set_default_timeout(180_000)
    page.goto(url)
    page.get_by_text("Layer widths").wait_for()
    wait_idle(page)
    yield page
    page.close()


def test_bundled_example_renders(page, tmp_path):
    page.get_by_text("Channels kept per output resolution").wait_for()
    page.screenshot(path=tmp_path / "explorer.png")
    assert (tmp_path / "explorer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The bundled example's structures are drawn: one bar trace per structure and state.
    names = page.evaluate("() => Array.from(document.querySelector('.st-key-width_bars "
                          ".js-plotly-plot').data.map(t => t.name))")
    assert any("FLOPs-regularized" in n for n in names) and any("size-regularized" in n for n in names)
    # Every chart drawn has both axis titles in the DOM (plotly.js draws .g-xtitle / .g-ytitle).
    charts = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => "
                           "[p.querySelector('.g-xtitle text')?.textContent || '', "
                           "p.querySelector('.g-ytitle text')?.textContent || ''])")
    assert len(charts) >= 5 and all(x and y for x, y in charts), charts
    assert ["FLOPs per inference", "test accuracy (mean +- std)"] in charts  # the paper's comparison


def test_upload_slide_and_download_widths(page, tmp_path):
    module = handbuilt.torch_residual_net().eval()
    model_file = tmp_path / "residual.pt2"
    torch.export.save(torch.export.export(module, (torch.zeros(1, 3, H, W),)), model_file)
    gammas = {"bn_stem": alive_at(13, range(8)), "bn_u1b": alive_at(13, range(8)),
              "bn_u2b": alive_at(13, range(8)), "bn_u1a": alive_at(11, range(5)),
              "bn_u2a": alive_at(7, range(3))}
    checkpoint = handbuilt.torch_checkpoint(module, gammas, tmp_path / "gammas.pt")

    page.get_by_text("Upload a file").click()
    wait_idle(page)
    page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(model_file))
    page.get_by_text("residual.pt2: torch").wait_for()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").nth(1).set_input_files(str(checkpoint))
    page.get_by_text("Groups and topology").wait_for()
    wait_idle(page)

    slider = page.locator("input[type=range][aria-label='What-if width multiplier']")
    slider.focus()
    for _ in range(40):  # 40 steps of 0.001
        page.keyboard.press("ArrowRight")
    wait_idle(page)
    factor = float(slider.input_value())
    assert factor == pytest.approx(1.04)

    downloaded = json.loads(download(page, "Widths JSON (morph-net)").read_text())

    graph = load_model(str(model_file))
    model = compile_width_model(graph)
    structure = load_structure(graph, checkpoint)
    alive = alive_widths(alive_masks(model.spaces, group_scores(model.spaces, structure.gammas)))
    expected = json.loads(widths_json(graph, model, apply_multiplier(model.spaces, alive, factor)))
    assert downloaded == expected
    # Hand check: 8 alive in the residual group, x1.04 -> floor(8.32) = 8; u1a 5 -> 5.
    assert downloaded["stem"] == 8 and downloaded["u1a"] == 5


def short_training_run(folder):
    """A real StructureLogger run: the digits example's network, a few steps with a strong FLOP
    regularizer (so the structure moves), logged every 2 steps."""
    sys.path.insert(0, str(EXAMPLES_DIR))
    import train_digits as td
    from morphscope.regularizers.torch_regularizer import FlopsRegularizer, StructureLogger

    torch.manual_seed(0)
    net = td.SeedNet()
    # Alive above 0.5; scales start spread over 0.55..1.5, so the penalty pushes them under the
    # threshold at different steps and the logged structure shrinks within these 9 steps.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.55, 1.5)
    reg = FlopsRegularizer(net, torch.zeros(1, 1, td.SIDE, td.SIDE), threshold=0.5)
    logger = StructureLogger(reg, folder / "flops_run", every=2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, td.SIDE, td.SIDE), torch.arange(16) % 10
    for step in range(9):
        loss = torch.nn.functional.cross_entropy(net(x), y) + 1e-5 * reg.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logger.step(step, loss=loss.item(), metrics={"val_accuracy": 0.1 * step})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted((folder / "flops_run").iterdir()):
            archive.write(file, f"flops_run/{file.name}")
    (folder / "flops_run.zip").write_bytes(buffer.getvalue())
    return folder / "flops_run.zip", folder / "flops_run"


def download(page, button, tries=3):
    """Click a download button and return the file. A rerun that lands between the click and
    the transfer replaces the served file and cancels the download: wait, click again (bounded)."""
    for attempt in range(1, tries + 1):
        wait_idle(page)
        with page.expect_download() as info:
            page.get_by_role("button", name=button).click()
        try:
            return Path(info.value.path())
        except PlaywrightError:
            if attempt == tries:
                raise


def settled(page, read, want, timeout_s=60.0):
    """Poll ``read()`` until it returns ``want`` or the time is up; returns the last value read."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while value != want and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        value = read()
    return value


def plotted(page, key, trace):
    """y values of one named trace of the chart drawn with ``key``, read from plotly in the page."""
    return page.evaluate(
        "([key, name]) => { const div = document.querySelector(`.st-key-${key} .js-plotly-plot`);"
        " return Array.from(div.data.find(t => t.name === name).y); }", [key, trace])


def test_run_upload_and_step_selector_drive_bars_and_costs(page, tmp_path):
    archive, folder = short_training_run(tmp_path)
    graph = load_model("example:digits")  # the same network as the run's
    model = compile_width_model(graph)
    expected = {}
    for step in (0, 2, 4, 6, 8):
        counts = json.loads((folder / f"alive_{step}").read_text())
        widths = widths_from_counts(model, counts)[0]
        expected[step] = (list(source_op_widths(graph, model, widths).values()), widths)
    assert expected[0][0] != expected[8][0] != expected[4][0]  # the structure moved during the run

    page.get_by_text("Bundled example").click()
    wait_idle(page)
    page.locator("[data-testid='stFileUploaderDropzoneInput']").nth(1).set_input_files(str(archive))
    page.get_by_text("Training runs", exact=True).wait_for()
    wait_idle(page)
    # Make the run the page's structure (cards, table, downloads).
    page.get_by_label("Structure (cards, expand, table, downloads)").first.click(force=True)
    page.get_by_role("option", name="flops_run/flops_run").click()
    wait_idle(page)
    # The cards show the structure expanded by the what-if multiplier (read, not assumed).
    factor = float(page.locator("input[type=range][aria-label='What-if width multiplier']").input_value())
    for step in (8, 4):
        # The page reruns after each move: wait (bounded) until the chart shows this step.
        assert settled(page, lambda: plotted(page, "width_bars", "flops_run/flops_run alive"),
                       expected[step][0]) == expected[step][0]
        flops = model.totals(apply_multiplier(model.spaces, expected[step][1], factor))["flops"]
        expect(page.locator("[data-testid='stMetricValue']").first).to_have_text(
            human_count(flops), timeout=60_000)
        # Streamlit puts the label's markdown source in the slider's aria-label: escapes included.
        slider = page.get_by_role("slider", name=plain("flops_run/flops_run") + ": step")
        slider.focus()
        for _ in range(2):  # two logged steps back: 8 -> 4
            page.keyboard.press("ArrowLeft")
        wait_idle(page)


def test_hostile_names_render_as_text(page):
    # A checkpoint and a run folder named as markdown used to make the page fetch the image and
    # show the link (issue 26); port 9 (discard) answers nothing, and nothing may ask it.
    from morphscope.importers.load import example_checkpoints

    hostile = "![p](http://127.0.0.1:9/p.png)[a](http://127.0.0.1:9/a) <a href='http://127.0.0.1:9/h'>h</a>"
    asked = []
    page.on("request", lambda request: asked.append(request.url) if ":9/" in request.url else None)
    runs = io.BytesIO()
    with zipfile.ZipFile(runs, "w") as archive:
        archive.writestr(f"{hostile}/alive_0", json.dumps({"res2.conv1.0": 40}))
    checkpoint = example_checkpoints("example:digits")["FLOPs-regularized"].read_bytes()
    uploaders = page.locator("[data-testid='stFileUploaderDropzoneInput']")
    uploaders.nth(0).set_input_files(files=[{"name": f"{hostile}.pt", "mimeType": "application/octet-stream",
                                              "buffer": checkpoint}])
    page.get_by_text("![p](http").first.wait_for()
    wait_idle(page)
    uploaders.nth(1).set_input_files(files=[{"name": "runs.zip", "mimeType": "application/zip",
                                              "buffer": runs.getvalue()}])
    page.get_by_text("Training runs", exact=True).wait_for()
    wait_idle(page)
    images = page.evaluate("() => Array.from(document.images).map(i => i.src)")
    links = page.evaluate("() => Array.from(document.querySelectorAll('a'))"  # plotly's are SVG <a>
                          ".map(a => a.getAttribute('href') || a.getAttribute('xlink:href') || '')")
    assert [u for u in images + links if ":9/" in u] == [] and asked == []
    # The name is on the page as the text it is: the step slider's label, the report's expander.
    assert page.get_by_text("'>h</a>").count() >= 2
