"""Plotly figures from analyzer results: pure functions, no Streamlit."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from morphscope.units import human_count

PALETTE = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3")
SEED_COLOR = "#B6B6B6"


def width_bars(widths: dict[str, Any]) -> go.Figure:
    """Layer widths in the paper's style: one group of bars per layer, input to output; the
    seed in grey next to each structure's alive width, and its expanded width (hatched) once
    a width multiplier changes it."""
    layers = widths["layers"]
    fig = go.Figure()
    hover_seed = [f"{n}<br>seed {w}<br>MACs {human_count(m)}<br>params {human_count(p)}"
                  for n, w, m, p in zip(layers, widths["seed"], widths["macs"], widths["params"])]
    fig.add_bar(x=layers, y=widths["seed"], name="seed", marker_color=SEED_COLOR,
                hovertext=hover_seed, hoverinfo="text")
    for color, (label, data) in zip(PALETTE, widths["structures"].items()):
        hover = [f"{n}<br>seed {s}<br>alive {a}<br>expanded {e}<br>MACs (seed) {human_count(m)}"
                 f"<br>params (seed) {human_count(p)}"
                 for n, s, a, e, m, p in zip(layers, widths["seed"], data["alive"], data["expanded"],
                                            widths["macs"], widths["params"])]
        fig.add_bar(x=layers, y=data["alive"], name=f"{label} alive", marker_color=color,
                    hovertext=hover, hoverinfo="text")
        if data["expanded"] != data["alive"]:  # only once a width multiplier changes them
            fig.add_bar(x=layers, y=data["expanded"], name=f"{label} expanded", marker_color=color,
                        marker_pattern_shape="/", opacity=0.55, hovertext=hover, hoverinfo="text")
    fig.update_layout(barmode="group", bargap=0.15, xaxis_title="layer (input to output)",
                      yaxis_title="output channels", legend={"orientation": "h", "y": -0.45},
                      margin={"t": 30}, height=460)
    fig.update_xaxes(tickangle=-60, tickfont_size=9)
    return fig


def gamma_histogram(magnitudes: dict[str, np.ndarray], threshold: float) -> go.Figure:
    """|gamma| per structure on a log axis, with the alive threshold drawn."""
    fig = go.Figure()
    floor = threshold / 1e3
    for color, (label, values) in zip(PALETTE, magnitudes.items()):
        fig.add_histogram(x=np.log10(np.maximum(values, floor)), name=label, marker_color=color,
                          opacity=0.6, nbinsx=60)
    fig.add_vline(x=np.log10(threshold), line_dash="dash", line_color="black",
                  annotation_text=f"threshold {threshold:g}")
    fig.update_layout(barmode="overlay", xaxis_title="log10 |gamma|", yaxis_title="channels",
                      margin={"t": 30, "b": 10}, height=320, legend={"orientation": "h", "y": -0.3})
    return fig


def tradeoff_figure(curves: dict[str, dict[str, np.ndarray]], factors: np.ndarray,
                    current: dict[str, float], matched: dict[str, float], y: str = "params") -> go.Figure:
    """FLOPs against ``y`` (params or latency_s) under a width multiplier, per structure; a
    filled marker at the current factor, a star where it matches the seed's FLOPs."""
    fig = go.Figure()
    colors = {"seed": SEED_COLOR, **dict(zip([k for k in curves if k != "seed"], PALETTE))}
    for label, curve in curves.items():
        color = colors[label]
        fig.add_scatter(x=curve["flops"], y=curve[y], name=label, mode="lines",
                        line={"color": color}, customdata=factors,
                        hovertemplate="x%{customdata:.2f}<br>FLOPs %{x:.3s}<br>%{y:.3s}<extra></extra>")
        for marks, symbol, size in ((current, "circle", 10), (matched, "star", 14)):
            if label in marks:
                i = int(np.argmin(np.abs(factors - marks[label])))
                fig.add_scatter(x=[curve["flops"][i]], y=[curve[y][i]], mode="markers",
                                marker={"color": color, "symbol": symbol, "size": size},
                                showlegend=False, hovertemplate=f"{label} x{marks[label]:.3f}<extra></extra>")
    fig.update_layout(xaxis_title="FLOPs per inference", yaxis_title=y.replace("_s", " (s)"),
                      margin={"t": 30, "b": 10}, height=380, legend={"orientation": "h", "y": -0.3})
    return fig


def cost_vs_step(logs: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """Target cost against training step, from the regularizers' ``cost.jsonl`` logs."""
    fig = go.Figure()
    for color, (label, lines) in zip(PALETTE, logs.items()):
        first = lines[0]["cost"] or 1
        fig.add_scatter(x=[line["step"] for line in lines], y=[line["cost"] / first for line in lines],
                        name=label, mode="lines", line={"color": color})
    fig.update_layout(xaxis_title="training step", yaxis_title="cost / cost at step 0",
                      margin={"t": 30, "b": 10}, height=300, legend={"orientation": "h", "y": -0.3})
    return fig
