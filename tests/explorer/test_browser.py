"""A real browser on the real app: ``streamlit run app.py`` on a free local port, Debian's
Chromium driven by Playwright. Uploads a model and a checkpoint, moves the width slider,
downloads the widths JSON and checks it against the analyzers; saves screenshots (the
README's pictures come from this test on the bundled example)."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import handbuilt
from morphscope.analyzers.alive import alive_masks, alive_widths, group_scores
from morphscope.exporters.writers import widths_json
from morphscope.analyzers.widths import apply_multiplier, compile_width_model
from handbuilt import H, W, alive_at
from morphscope.importers.checkpoints import load_structure
from morphscope.importers.load import load_model

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("streamlit did not become healthy in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is required (apt-get install chromium; .ci/run does it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(server)
        yield page
        browser.close()


def wait_idle(page):
    page.wait_for_timeout(500)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=120_000)
    page.locator(".js-plotly-plot .main-svg").first.wait_for()
    page.locator("[data-testid='stDataFrame']").first.wait_for()
    page.wait_for_timeout(1500)  # let plotly and the data grid paint


def test_bundled_example_screenshots(page):
    page.get_by_text("Layer widths").wait_for()
    page.get_by_text("Trade-off under a width multiplier").wait_for()
    wait_idle(page)
    page.screenshot(path=SCREENSHOTS / "explorer.png", full_page=False)
    page.get_by_text("Layer widths").scroll_into_view_if_needed()
    page.locator(".js-plotly-plot").first.screenshot(path=SCREENSHOTS / "width_bars.png")
    page.get_by_text("Trade-off under a width multiplier").scroll_into_view_if_needed()
    wait_idle(page)
    page.locator(".js-plotly-plot").nth(3).screenshot(path=SCREENSHOTS / "tradeoff.png")
    assert (SCREENSHOTS / "explorer.png").stat().st_size > 10_000


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
    page.screenshot(path=SCREENSHOTS / "uploaded.png")

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Widths JSON (morph-net)").click()
    downloaded = json.loads(Path(download_info.value.path()).read_text())

    graph = load_model(str(model_file))
    model = compile_width_model(graph)
    structure = load_structure(graph, checkpoint)
    alive = alive_widths(alive_masks(model.spaces, group_scores(model.spaces, structure.gammas)))
    expected = json.loads(widths_json(graph, model, apply_multiplier(model.spaces, alive, factor)))
    assert downloaded == expected
    # Hand check: 8 alive in the residual group, x1.04 -> floor(8.32) = 8; u1a 5 -> 5.
    assert downloaded["stem"] == 8 and downloaded["u1a"] == 5
