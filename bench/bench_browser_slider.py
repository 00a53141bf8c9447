"""Slider to screen in a real browser: from one width-multiplier key press to redrawn charts.

Starts ``streamlit run app.py`` on the bundled example, opens it in Debian's Chromium
(Playwright), then per step presses the slider's arrow key once and waits until the trade-off
chart's current-factor dots are redrawn at the new multiplier (the page's charts come in one
script run) and Streamlit's run indicator is gone. Prints the median and spread of N steps, with the machine's load, beside
the server-side figure of ``bench/bench_slider.py`` (analysis + figure building only).

    python bench/bench_browser_slider.py [--steps 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from morphscope.explorer.screenshots import open_page, serve_app, wait_idle

# The trade-off chart's current-factor dots carry the factor in their text ("... x1.001"): they
# change at every step (the width bars only when a floor(width x factor) does).
DOTS = "() => JSON.stringify(document.querySelector('.st-key-tradeoff_params .js-plotly-plot').data.map(t => t.text))"


def slider_to_screen_s(page, steps: int) -> list[float]:
    """Seconds from each arrow-key press on the multiplier slider to the redrawn charts."""
    slider = page.locator("input[type=range][aria-label='What-if width multiplier']")
    page.keyboard.press("Escape")
    times = []
    for _ in range(steps):
        before = page.evaluate(DOTS)
        slider.focus()
        start = time.perf_counter()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"before => ({DOTS})() !== before", arg=before, timeout=60_000, polling="raf")
        page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=60_000)
        times.append(time.perf_counter() - start)
        page.wait_for_timeout(300)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    started = time.perf_counter()
    with serve_app() as url, open_page(url) as page:
        page.get_by_text("Layer widths").wait_for()
        wait_idle(page)
        first_page_s = time.perf_counter() - started
        times = slider_to_screen_s(page, args.steps)
    load = os.getloadavg()[0]
    print(f"bundled example, {os.cpu_count()} cores, load {load:.1f}; first page (server start "
          f"included) {first_page_s:.1f} s")
    print(f"slider step -> redrawn charts, {len(times)} steps: median {statistics.median(times) * 1e3:.0f} ms "
          f"(min {min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f})")


if __name__ == "__main__":
    main()
