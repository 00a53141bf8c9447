"""Where a structure changed: width bars with each layer's output resolution, the share of
channels kept per resolution, and the per-layer table (the CSV export's numbers, on screen)."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from morphscope.explorer import figures, state
from morphscope.explorer.views.common import plain

WIDTH_SWEEP = "width_sweep.json"  # examples/width_sweep_digits.py writes it beside the example


def width_section(graph: Any, model: Any, views: list[Any]) -> None:
    """Layer widths, input to output, with a second axis row naming each output resolution;
    the hover holds seed, alive and expanded widths, MACs and params."""
    from morphscope.analyzers.compare import layer_widths
    from morphscope.analyzers.resolution import layer_resolutions
    from morphscope.exporters.writers import layer_table

    st.subheader("Layer widths")
    widths = layer_widths(graph, model, views)
    tables = {v.label: layer_table(graph, model, v.alive, v.expanded) for v in views}
    st.plotly_chart(figures.width_bars(widths, layer_resolutions(graph, widths["layers"]), tables),
                    key="width_bars")


def kept_section(graph: Any, model: Any, views: list[Any]) -> None:
    """Share of channels each structure keeps per output resolution."""
    from morphscope.analyzers.resolution import kept_by_resolution

    st.subheader("Channels kept per output resolution")
    kept = kept_by_resolution(graph, model, {v.label: v.alive for v in views})
    st.plotly_chart(figures.kept_by_resolution(kept), key="kept_by_resolution")
    st.caption("Prunable conv and linear layers grouped by the size of the map they write. FLOP "
               "targeting removes channels where each costs the most MACs (high resolution); "
               "size targeting where each holds the most weights (late, wide, low resolution).")


def layer_table_section(graph: Any, model: Any, view: Any) -> None:
    """The selected structure's per-layer table, sortable by any column: the same rows as the
    Per-layer CSV download, plus each layer's output resolution."""
    from morphscope.analyzers.resolution import layer_resolutions
    from morphscope.exporters.writers import layer_table

    st.subheader(f"Per-layer table: {plain(view.label)}")
    rows = layer_table(graph, model, view.alive, view.expanded)
    resolutions = layer_resolutions(graph, [r["layer"] for r in rows])
    shown = [{"layer": r["layer"], "resolution": res, **{k: v for k, v in r.items() if k != "layer"}}
             for r, res in zip(rows, resolutions)]
    count = st.column_config.NumberColumn(format="localized")
    st.dataframe(shown, key=state.TABLE_SORT, hide_index=True,
                 column_config={k: count for k in shown[0] if k.endswith(("_width", "_macs", "_params"))}
                 if shown else None)
    st.caption("Click a column header to sort. Widths are output channels; MACs per image.")


@st.cache_data(max_entries=4, show_spinner=False)
def _width_sweep(path: str) -> dict[str, Any] | None:
    from pathlib import Path

    file = Path(path)
    return json.loads(file.read_text()) if file.is_file() else None


def result_section(example_dir: Any) -> None:
    """The paper's comparison on the bundled example: accuracy against FLOPs of MorphNet's
    structure, expanded, vs the seed under a uniform width multiplier, each retrained."""
    doc = _width_sweep(str(example_dir / WIDTH_SWEEP))
    if doc is None:
        return
    st.subheader("MorphNet vs a uniform width multiplier (retrained)")
    st.plotly_chart(figures.width_sweep(doc["points"], {
        "seed": "seed x uniform width multiplier",
        "morphnet": "MorphNet (FLOP-regularized), expanded to the same FLOPs"}), key="width_sweep")
    runs = len(doc["runs"])
    st.caption(f"Every point: {len(doc['points'][0]['accuracies'])} trainings from scratch "
               f"({doc['epochs']} epochs each; mean, bar = one standard deviation). Task: "
               f"{plain(doc['task'])}. {runs} trainings took {doc['seconds'] / 60:.0f} min in "
               f"{doc['workers']} processes (examples/width_sweep_digits.py).")
