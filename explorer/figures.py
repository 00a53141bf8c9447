"""Plotly figures from analyzer results: pure functions, no Streamlit."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import plotly.graph_objects as go

from morphscope.units import human_count

def _vline(x: float, text: str = "", **line: Any) -> dict[str, Any]:
    """A vertical line across the plot as a layout shape (plotly's add_vline costs ~10 ms)."""
    return {"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
            "line": line, "label": {"text": text, "textposition": "end", "textangle": 0, "xanchor": "left",
                                    "yanchor": "bottom", "font": {"size": 11}}}


def _text(name: str) -> str:
    """A user-supplied name (file, run, layer, metric) as literal text in plotly, which draws
    ``<a href>``, ``<b>``, ``<br>`` and entities in names, ticks, titles and hover text, and fills
    ``%{...}`` in hover templates: ``<``, ``>``, ``&`` and ``%`` become entities."""
    return html.escape(name, quote=False).replace("%", "&#37;")


def _figure() -> go.Figure:
    """An empty figure that skips plotly's per-property validation when traces are added: the
    figures here are fixed code paths (checked by the tests), and validation was half of the
    time a slider move spends building them. Without validation nothing expands shorthand, so
    axis titles go through :func:`_axis_titles` (a bare ``xaxis_title`` string is serialized
    as it is, and the plotly.js Streamlit ships draws no title from it)."""
    return go.Figure(_validate=False)


def _axis_titles(fig: go.Figure, x: str, y: str) -> None:
    """Axis titles in plotly.js's own form, ``{"title": {"text": ...}}``."""
    fig.update_layout(xaxis={"title": {"text": x}}, yaxis={"title": {"text": y}})


PALETTE = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3")
SEED_COLOR = "#B6B6B6"
_GOLDEN_ANGLE_DEG = 137.508  # successive hues this far apart never repeat and stay spread


def _palette(n: int) -> list[str]:
    """``n`` distinct colours: :data:`PALETTE`, then hues a golden angle apart (any number draws)."""
    extra = [f"hsl({round(i * _GOLDEN_ANGLE_DEG) % 360}, 65%, 45%)" for i in range(max(0, n - len(PALETTE)))]
    return [*PALETTE[:n], *extra]


def width_bars(widths: dict[str, Any], resolutions: list[str] | None = None,
               tables: dict[str, list[dict[str, Any]]] | None = None) -> go.Figure:
    """Layer widths in the paper's style: one group of bars per layer, input to output; the
    seed in grey next to each structure's alive width, and its expanded width (hatched) once
    a width multiplier changes it. With ``resolutions`` (one label per layer), a second axis
    row names each layer's output resolution; ``tables`` (label -> per-layer rows of
    :func:`~morphscope.exporters.writers.layer_table`) put alive and expanded MACs and params in
    the hover."""
    layers = [_text(n) for n in widths["layers"]]
    x = [resolutions, layers] if resolutions else layers
    fig = _figure()
    hover_seed = [f"{n}<br>seed {w:,}<br>MACs {human_count(m)}<br>params {human_count(p)}"
                  for n, w, m, p in zip(layers, widths["seed"], widths["macs"], widths["params"])]
    fig.add_bar(x=x, y=widths["seed"], name="seed", marker_color=SEED_COLOR,
                hovertext=hover_seed, hoverinfo="text")
    for color, (label, data) in zip(_palette(len(widths["structures"])), widths["structures"].items()):
        rows = (tables or {}).get(label)
        hover = [f"{_text(label)}: {n}<br>width seed {s:,} / alive {a:,} / expanded {e:,}"
                 + (f"<br>MACs seed {human_count(r['seed_macs'])} / alive {human_count(r['alive_macs'])}"
                    f" / expanded {human_count(r['expanded_macs'])}<br>params seed "
                    f"{human_count(r['seed_params'])} / alive {human_count(r['alive_params'])} / "
                    f"expanded {human_count(r['expanded_params'])}" if r else "")
                 for n, s, a, e, r in zip(layers, widths["seed"], data["alive"], data["expanded"],
                                          rows or [None] * len(layers))]
        fig.add_bar(x=x, y=data["alive"], name=f"{_text(label)} alive", marker_color=color,
                    hovertext=hover, hoverinfo="text")
        if data["expanded"] != data["alive"]:  # only once a width multiplier changes them
            fig.add_bar(x=x, y=data["expanded"], name=f"{_text(label)} expanded", marker_color=color,
                        marker_pattern_shape="/", opacity=0.55, hovertext=hover, hoverinfo="text")
    title = "layer (input to output), output resolution below" if resolutions else "layer (input to output)"
    _axis_titles(fig, title, "output channels")
    fig.update_layout(barmode="group", bargap=0.15, legend={"orientation": "h", "y": -0.5},
                      margin={"t": 30}, height=500)
    fig.update_xaxes(tickangle=-60, tickfont_size=9)
    return fig


def kept_by_resolution(kept: dict[str, Any]) -> go.Figure:
    """Share of channels each structure keeps per output resolution (highest first): FLOP
    targeting cuts the high resolutions, size targeting the low ones."""
    fig = _figure()
    ticks = [f"{r}<br>{len(kept['layers'][r])} layers, {c:,} ch" for r, c in
             zip(kept["resolutions"], kept["seed_channels"])]
    for color, (label, shares) in zip(_palette(len(kept["shares"])), kept["shares"].items()):
        fig.add_bar(x=ticks, y=[100 * v for v in shares], name=_text(label), marker_color=color,
                    text=[f"{100 * v:.0f}%" for v in shares], textposition="outside",
                    hovertemplate=f"{_text(label)}<br>%{{x}}<br>kept %{{y:.1f}}% of the seed's channels<extra></extra>")
    fig.update_layout(shapes=[{"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": 100,
                               "y1": 100, "line": {"dash": "dot", "color": SEED_COLOR},
                               "label": {"text": "seed", "textposition": "end"}}])
    _axis_titles(fig, "output resolution (highest first)", "channels kept (% of seed)")
    fig.update_layout(barmode="group", yaxis_range=[0, 115],
                      margin={"t": 30, "b": 10}, height=360, legend={"orientation": "h", "y": -0.35})
    return fig


def gamma_histogram(magnitudes: dict[str, np.ndarray], threshold: float) -> go.Figure:
    """|gamma| per structure on a log axis, with the alive threshold drawn; values below
    threshold / 1000 (zeros too) are gathered in a labelled floor bin."""
    fig = _figure()
    floor = threshold / 1e3
    for color, (label, values) in zip(_palette(len(magnitudes)), magnitudes.items()):
        fig.add_histogram(x=np.log10(np.maximum(values, floor)), name=_text(label), marker_color=color,
                          opacity=0.6, nbinsx=60)
    fig.update_layout(shapes=[
        _vline(np.log10(threshold), f"threshold {threshold:g}", dash="dash", color="black"),
        _vline(np.log10(floor), f"floor: <= {floor:g}", dash="dot", color="grey")])
    _axis_titles(fig, "log10 |gamma| (floor bin at threshold / 1000: smaller values and zeros)", "channels")
    fig.update_layout(barmode="overlay",
                      margin={"t": 45, "b": 10}, height=320, legend={"orientation": "h", "y": -0.3})
    return fig


def tradeoff_figure(curves: dict[str, dict[str, np.ndarray]], factors: np.ndarray,
                    current: dict[str, float], matched: dict[str, float], y: str = "params",
                    matched_resource: str = "flops", latency_source: str = "V100 roofline") -> go.Figure:
    """FLOPs against ``y`` (params or latency_s) under a width multiplier, per structure, on log
    axes spanning 0.25x to 2x of the seed's values; a dot at the current factor, a star where
    the structure matches the seed's ``matched_resource`` (both explained in the legend)."""
    fig = _figure()
    structures = [k for k in curves if k != "seed"]
    colors = {"seed": SEED_COLOR, **dict(zip(structures, _palette(len(structures))))}
    one = int(np.argmin(np.abs(factors - 1.0)))
    seed_x, seed_y = curves["seed"]["flops"][one], curves["seed"][y][one]
    for label, curve in curves.items():
        fig.add_scatter(x=curve["flops"], y=curve[y], name=_text(label), mode="lines",
                        line={"color": colors[label]}, customdata=factors,
                        hovertemplate="x%{customdata:.2f}<br>FLOPs %{x:.3s}<br>%{y:.3s}<extra></extra>")
    for marks, symbol, size, name in ((current, "circle", 10, "current factor"),
                                      (matched, "star", 15, f"matches the seed's {matched_resource}")):
        shown = [label for label in curves if label in marks]  # one trace per marker kind
        at = [int(np.argmin(np.abs(factors - marks[label]))) for label in shown]
        fig.add_scatter(x=[curves[label]["flops"][i] for label, i in zip(shown, at)],
                        y=[curves[label][y][i] for label, i in zip(shown, at)], mode="markers", name=name,
                        marker={"color": [colors[label] for label in shown], "symbol": symbol, "size": size,
                                "line": {"color": "black", "width": 1}},
                        text=[f"{_text(label)} x{marks[label]:.3f}" for label in shown],
                        hovertemplate="%{text}<extra></extra>")
    # 0.25x to 2x of the seed, widened to keep every current-factor dot and star on the plot
    marked = [(curves[label]["flops"][i], curves[label][y][i]) for marks in (current, matched)
              for label in curves if label in marks
              for i in [int(np.argmin(np.abs(factors - marks[label])))]]
    xs, ys = [p[0] for p in marked if p[0] > 0], [p[1] for p in marked if p[1] > 0]
    fig.update_xaxes(type="log", range=[np.log10(min([0.25 * seed_x, *[0.8 * v for v in xs]])),
                                        np.log10(max([2 * seed_x, *[1.25 * v for v in xs]]))])
    if seed_y > 0:
        fig.update_yaxes(type="log", range=[np.log10(min([0.25 * seed_y, *[0.8 * v for v in ys]])),
                                            np.log10(max([2 * seed_y, *[1.25 * v for v in ys]]))])
    y_title = {"params": "parameters", "latency_s": f"latency (s, predicted: {_text(latency_source)})"}.get(y, y)
    _axis_titles(fig, "FLOPs per inference (log, 0.25x to 2x seed)", y_title + " (log)")
    fig.update_layout(margin={"t": 30, "b": 10}, height=400, legend={"orientation": "h", "y": -0.3})
    return fig


def run_costs(series: dict[str, dict[str, Any]], selected: dict[str, int]) -> go.Figure:
    """Each run's target cost against step, as a share of the seed's cost; a marker at each
    run's selected step and, for a run steered to a budget, the budget as a dashed line.
    ``series``: label -> ``steps``, ``share`` (drawn points), ``target``, optional
    ``budget_share``."""
    fig = _figure()
    for color, (raw_label, run) in zip(_palette(len(series)), series.items()):
        label, target = _text(raw_label), _text(run["target"])
        fig.add_scatter(x=run["steps"], y=[100 * v for v in run["share"]], mode="lines",
                        name=f"{label} ({target})", line={"color": color},
                        hovertemplate="step %{x:,}<br>%{y:.1f}% of the seed's " + target + "<extra></extra>")
        if run.get("budget_share") is not None:
            fig.add_scatter(x=[run["steps"][0], run["steps"][-1]], y=[100 * run["budget_share"]] * 2,
                            mode="lines", line={"color": color, "dash": "dash"}, name=f"{label}: budget",
                            hovertemplate=f"{label}: budget %{{y:.1f}}% of the seed's {target}<extra></extra>")
        if raw_label in selected:
            fig.add_scatter(x=[selected[raw_label]], y=[100 * run["selected_share"]], mode="markers",
                            marker={"color": color, "size": 11, "symbol": "diamond"}, showlegend=False,
                            hovertemplate=f"{label}: selected step %{{x:,}}<extra></extra>")
    _axis_titles(fig, "training step", "target cost (% of seed)")
    fig.update_layout(margin={"t": 30, "b": 10}, height=320, legend={"orientation": "h", "y": -0.35})
    return fig


def run_strengths(strengths: dict[str, tuple[np.ndarray, np.ndarray]]) -> go.Figure:
    """The strength each run's regularizer used against step (log scale): the trace of a run
    steered to a target. ``strengths``: label -> (steps, strengths)."""
    fig = _figure()
    for color, (label, (steps, values)) in zip(_palette(len(strengths)), strengths.items()):
        fig.add_scatter(x=steps, y=values, mode="lines", name=_text(label), line={"color": color},
                        hovertemplate="step %{x:,}<br>strength %{y:.3g}<extra></extra>")
    fig.update_yaxes(type="log")
    _axis_titles(fig, "training step", "regularizer strength (log)")
    fig.update_layout(margin={"t": 30, "b": 10}, height=280, legend={"orientation": "h", "y": -0.4})
    return fig


def run_heatmap(label: str, steps: np.ndarray, layers: list[str], shares: np.ndarray,
                selected_step: int) -> go.Figure:
    """Each layer's alive width as a share of the seed's (rows, input to output, top to bottom)
    against step (columns): how the structure evolved; a line at the selected step."""
    fig = go.Figure(go.Heatmap(z=100 * np.asarray(shares), x=steps, y=[_text(n) for n in layers], zmin=0, zmax=100,
                               colorscale="Viridis", colorbar={"title": "% of seed"},
                               hovertemplate="%{y}<br>step %{x:,}<br>%{z:.0f}% of seed width<extra></extra>"))
    fig.update_layout(shapes=[_vline(selected_step, color="red", width=2)])
    fig.update_yaxes(autorange="reversed", tickfont_size=9)
    _axis_titles(fig, "training step", "layer (input to output)")
    fig.update_layout(title={"text": f"{_text(label)}: alive width per layer", "font": {"size": 14}},
                      margin={"t": 40, "b": 10},
                      height=max(260, 18 * len(layers) + 120))
    return fig


def sweep_scatter(points: dict[str, tuple[float, float]], metric: str) -> go.Figure:
    """Several runs (a sweep of regularization strengths): final cost (share of the seed's)
    against the final logged ``metric``."""
    fig = _figure()
    shown_metric = _text(metric)
    for color, (raw_label, (share, value)) in zip(_palette(len(points)), points.items()):
        label = _text(raw_label)
        fig.add_scatter(x=[100 * share], y=[value], mode="markers+text", name=label, text=[label],
                        textposition="top center", marker={"color": color, "size": 12},
                        hovertemplate=f"{label}<br>final cost %{{x:.1f}}% of seed<br>{shown_metric} %{{y:.4g}}<extra></extra>")
    _axis_titles(fig, "final cost in each run's own target (% of the seed's; target in the label)", shown_metric)
    fig.update_layout(margin={"t": 30, "b": 10}, height=360, showlegend=False)
    return fig


def width_sweep(points: list[dict[str, Any]], labels: dict[str, str]) -> go.Figure:
    """Accuracy against FLOPs, each point retrained from scratch several times: mean with a
    bar of +- one standard deviation, per family (seed under a uniform width multiplier vs
    MorphNet's structure expanded to the same FLOPs)."""
    fig = _figure()
    for color, family in zip((SEED_COLOR, PALETTE[0]), labels):
        chosen = sorted((p for p in points if p["family"] == family), key=lambda p: p["flops"])
        fig.add_scatter(
            x=[p["flops"] for p in chosen], y=[p["mean"] for p in chosen], name=labels[family],
            mode="lines+markers", line={"color": "#555" if family == "seed" else color},
            marker={"size": 9}, error_y={"type": "data", "array": [p["std"] for p in chosen], "visible": True},
            customdata=[[p["factor"], len(p["accuracies"]), ", ".join(f"{a:.3f}" for a in p["accuracies"]),
                         p["params"]] for p in chosen],
            hovertemplate=("FLOPs %{x:,}<br>accuracy %{y:.3f} (mean of %{customdata[1]}: "
                           "%{customdata[2]})<br>params %{customdata[3]:,}<br>budget: seed x%{customdata[0]}"
                           "<extra></extra>"))
    _axis_titles(fig, "FLOPs per inference", "test accuracy (mean +- std)")
    fig.update_layout(margin={"t": 30, "b": 10}, height=380, legend={"orientation": "h", "y": -0.3})
    return fig
