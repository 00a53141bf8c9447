"""The README's screenshots, made by driving the real app in a real browser.

    python -m morphscope.explorer.screenshots [--out docs/screenshots]

Starts ``streamlit run app.py`` on a free local port, opens it in Debian's Chromium through
Playwright, and saves the explorer on the bundled example, its layer widths, the channels kept
per resolution, the training runs, the paper's result chart and the trade-off curves. The
server and browser helpers are shared with the browser test (tests/explorer/test_browser.py).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HEALTH_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app() -> Iterator[str]:
    """``streamlit run app.py`` on 127.0.0.1 and a free port; yields its URL once healthy."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + HEALTH_TIMEOUT_S
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"streamlit did not become healthy in {HEALTH_TIMEOUT_S} s") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def open_page(url: str, width: int = 1500, height: int = 1000) -> Iterator[Any]:
    """A Chromium page (Debian's binary, headless, no network beyond the app) at ``url``."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("Debian's chromium is required (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(180_000)
            page.goto(url)
            yield page
        finally:
            browser.close()


def wait_idle(page: Any) -> None:
    """Wait until the script run ends and plotly and the data grid have painted."""
    page.wait_for_timeout(500)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=180_000)
    page.locator(".js-plotly-plot .main-svg").first.wait_for()
    page.wait_for_timeout(1500)


def chart(page: Any, key: str) -> Any:
    """The plotly chart drawn with ``st.plotly_chart(..., key=key)``."""
    return page.locator(f".st-key-{key} .js-plotly-plot").first


def _shot(page: Any, key: str, path: Path) -> None:
    chart(page, key).scroll_into_view_if_needed()
    wait_idle(page)
    chart(page, key).screenshot(path=path)


def take_screenshots(out: Path) -> list[Path]:
    """Save the README's pictures into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    with serve_app() as url, open_page(url) as page:
        page.get_by_text("Layer widths").wait_for()
        wait_idle(page)
        page.screenshot(path=out / "explorer.png")
        _shot(page, "width_bars", out / "width_bars.png")
        _shot(page, "kept_by_resolution", out / "resolution.png")
        _shot(page, "width_sweep", out / "result.png")
        _shot(page, "tradeoff_params", out / "tradeoff.png")
        page.get_by_text("Show the example's training runs").click()
        page.get_by_text("Training runs", exact=True).wait_for()
        wait_idle(page)
        page.get_by_text("Training runs", exact=True).scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=out / "runs.png")
    return sorted(out.glob("*.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/screenshots", help="folder, relative to where it runs "
                        "(default docs/screenshots: run it from the checkout whose pictures to refresh)")
    args = parser.parse_args()
    for path in take_screenshots(Path(args.out)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
