"""Every chart carries its axis titles in the form plotly.js draws: ``{"title": {"text": ...}}``
in the serialized figure (a bare string is ignored by the plotly.js Streamlit ships)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from morphscope.explorer import figures


def _width_bars():
    widths = {"layers": ["a", "b"], "seed": [8, 16], "macs": [100, 200], "params": [10, 20],
              "structures": {"s": {"alive": [4, 8], "expanded": [6, 12]}}}
    return figures.width_bars(widths, ["8x8", "4x4"])


def _kept():
    kept = {"resolutions": ["8x8"], "seed_channels": [24], "layers": {"8x8": ["a"]}, "shares": {"s": [0.5]}}
    return figures.kept_by_resolution(kept)


def _tradeoff(y):
    factors = np.array([0.5, 1.0, 2.0])
    curve = {"flops": np.array([1.0, 4.0, 16.0]), "params": np.array([1.0, 4.0, 16.0]),
             "latency_s": np.array([1e-6, 2e-6, 4e-6])}
    return figures.tradeoff_figure({"seed": curve, "s": curve}, factors, {"s": 1.0}, {"s": 1.0}, y)


def _run_costs():
    return figures.run_costs({"r": {"steps": [0, 1], "share": [1.0, 0.5], "target": "flops",
                                    "selected_share": 0.5, "budget_share": 0.5}}, {"r": 1})


def _heatmap():
    return figures.run_heatmap("r", np.array([0, 1]), ["a", "b"], np.ones((2, 2)), 1)


def _sweep_scatter():
    return figures.sweep_scatter({"r": (0.5, 0.9)}, "val_accuracy")


def _width_sweep():
    point = {"family": "seed", "flops": 10, "mean": 0.9, "std": 0.01, "factor": 1.0,
             "accuracies": [0.9], "params": 5}
    return figures.width_sweep([point, {**point, "family": "morphnet"}], {"seed": "seed", "morphnet": "MorphNet"})


CHARTS = {
    "width_bars": (_width_bars, "layer (input to output), output resolution below", "output channels"),
    "kept_by_resolution": (_kept, "output resolution (highest first)", "channels kept (% of seed)"),
    "gamma_histogram": (lambda: figures.gamma_histogram({"s": np.array([0.0, 0.5, 1.0])}, 0.01),
                        "log10 |gamma| (floor bin at threshold / 1000: smaller values and zeros)", "channels"),
    "tradeoff_params": (lambda: _tradeoff("params"), "FLOPs per inference (log, 0.25x to 2x seed)",
                        "parameters (log)"),
    "tradeoff_latency": (lambda: _tradeoff("latency_s"), "FLOPs per inference (log, 0.25x to 2x seed)",
                         "latency (s, predicted: V100 roofline) (log)"),
    "run_costs": (_run_costs, "training step", "target cost (% of seed)"),
    "run_heatmap": (_heatmap, "training step", "layer (input to output)"),
    "run_strengths": (lambda: figures.run_strengths({"r": (np.array([0, 10]), np.array([1e-9, 2e-9]))}),
                      "training step", "regularizer strength (log)"),
    "sweep_scatter": (_sweep_scatter, "final cost in each run's own target (% of the seed's; target in the label)",
                      "val_accuracy"),
    "width_sweep": (_width_sweep, "FLOPs per inference", "test accuracy (mean +- std)"),
}


@pytest.mark.parametrize("chart", CHARTS)
def test_serialized_figure_has_axis_titles_plotly_js_draws(chart):
    build, x_title, y_title = CHARTS[chart]
    layout = json.loads(build().to_json())["layout"]
    assert layout["xaxis"]["title"] == {"text": x_title}
    assert layout["yaxis"]["title"] == {"text": y_title}


def test_every_figure_builder_is_covered():
    public = {name for name in vars(figures) if callable(getattr(figures, name)) and not name.startswith("_")
              and getattr(getattr(figures, name), "__module__", "") == figures.__name__}
    covered = {"width_bars", "kept_by_resolution", "gamma_histogram", "tradeoff_figure", "run_costs",
               "run_heatmap", "run_strengths", "sweep_scatter", "width_sweep"}
    assert public == covered


def test_any_number_of_structures_draws_each_in_its_own_colour():
    # Seven checkpoints used to end in KeyError: 'g6.pt' (a palette of six colours), and a
    # seventh run or structure was left out of the run and width charts.
    factors = np.array([0.5, 1.0, 2.0])
    curve = {"flops": np.array([1.0, 4.0, 16.0]), "params": np.array([1.0, 4.0, 16.0])}
    labels = [f"g{i}.pt" for i in range(9)]
    fig = figures.tradeoff_figure({"seed": curve, **{label: curve for label in labels}}, factors,
                                  {label: 1.0 for label in labels}, {label: 1.0 for label in labels})
    lines = {t.name: t.line.color for t in fig.data if t.mode == "lines"}
    assert list(lines) == ["seed", *labels]
    assert len(set(lines.values())) == 10  # seed grey and nine distinct colours
    series = {label: {"steps": [0, 1], "share": [1.0, 0.5], "target": "flops", "selected_share": 0.5}
              for label in labels}
    drawn = [t for t in figures.run_costs(series, {}).data if t.mode == "lines"]
    assert len(drawn) == 9 and len({t.line["color"] for t in drawn}) == 9
    widths = {"layers": ["a"], "seed": [8], "macs": [1], "params": [1],
              "structures": {label: {"alive": [4], "expanded": [4]} for label in labels}}
    bars = [t for t in figures.width_bars(widths).data if t.name.endswith(" alive")]
    assert len(bars) == 9 and len({t.marker["color"] for t in bars}) == 9


def test_names_reach_plotly_as_text_not_markup():
    # plotly draws <a href>, <b> and <br> in names, ticks, titles and hover text, and fills
    # %{...} in hover templates; a run, layer or metric name is shown as it is (issue 26).
    heat = figures.run_heatmap("<b>r</b>", np.array([0, 5]), ["<a href='http://h/x'>l</a>"], np.ones((1, 2)), 5)
    assert list(heat.data[0].y) == ["&lt;a href='http://h/x'&gt;l&lt;/a&gt;"]
    assert heat.layout.title.text == "&lt;b&gt;r&lt;/b&gt;: alive width per layer"
    [point] = figures.sweep_scatter({"r %{x} & co": (0.5, 0.9)}, "<i>acc</i>").data
    assert point.name == "r &#37;{x} &amp; co"
    assert point.hovertemplate == ("r &#37;{x} &amp; co<br>final cost %{x:.1f}% of seed<br>"
                                   "&lt;i&gt;acc&lt;/i&gt; %{y:.4g}<extra></extra>")
