"""The explorer page: pick a model and checkpoints, compare seed and morphed structures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from morphscope.explorer import cache, figures, state
from morphscope.units import human_count, human_seconds
from morphscope.errors import MorphScopeError

SOURCES = ("Bundled example", "Upload a file", "Zoo model")
BUNDLED = "example:digits"
THRESHOLDS = [float(f"{t:.1g}") for t in np.geomspace(1e-4, 0.5, 38)]
FACTORS = np.round(np.linspace(0.25, 3.0, 111), 4)


@dataclass
class LoadedModel:
    key: str  # what the model is, for caches and messages
    graph: Any
    model: Any
    rebuild_spec: str | None  # spec or path the framework model can be rebuilt from
    side: int | None = None


def _pick_model() -> LoadedModel | None:
    """Sidebar model picker. A file that cannot be read shows its error by the uploader and
    the last model that loaded stays on screen."""
    source = st.sidebar.radio("Model", SOURCES, key=state.MODEL_SOURCE)
    loaded = None
    try:
        if source == "Bundled example":
            st.sidebar.caption("A residual + inception + separable net trained on scikit-learn's "
                               "digits with a FLOP and a size regularizer (examples/train_digits.py).")
            graph, model = cache.model_from_spec(BUNDLED)
            loaded = LoadedModel(BUNDLED, graph, model, BUNDLED)
        elif source == "Upload a file":
            upload = st.sidebar.file_uploader("Model file (.keras, .h5, .pt2)", type=["keras", "h5", "pt2"],
                                              key=state.MODEL_UPLOAD)
            if upload is not None:
                data = upload.getvalue()
                with st.spinner(f"Parsing {upload.name}..."):
                    graph, model, path = cache.model_from_upload(upload.name, data)
                loaded = LoadedModel(f"{upload.name}#{cache.content_key(data)}", graph, model,
                                     path if not upload.name.endswith(".pt2") else None)
        else:
            spec = st.sidebar.text_input("torchvision:NAME or keras:NAME", "torchvision:resnet18",
                                         key=state.ZOO_SPEC)
            side = int(st.sidebar.number_input("Input size (pixels)", 32, 1024, 224, key=state.ZOO_SIDE))
            with st.spinner(f"Building and capturing {spec}..."):
                graph, model = cache.model_from_spec(spec, side)
            loaded = LoadedModel(f"{spec}@{side}", graph, model, spec, side)
    except MorphScopeError as err:
        st.sidebar.error(str(err))
    if loaded is not None:
        st.session_state[state.LAST_GOOD_MODEL] = loaded
        return loaded
    return st.session_state.get(state.LAST_GOOD_MODEL)


def _pick_checkpoints(loaded: LoadedModel) -> list[tuple[str, dict[str, Any]]]:
    """Checkpoint uploader with a label per file; the bundled example brings its own two."""
    structures = []
    if loaded.key == BUNDLED:
        from morphscope.importers.load import example_checkpoints

        for label, path in example_checkpoints(BUNDLED).items():
            data = path.read_bytes()
            structures.append((label, cache.structure_from_bytes(loaded.graph, loaded.key, path.name, data)))
    uploads = st.sidebar.file_uploader(  # no type filter: morph-net's alive_<step> has no suffix
        "Gamma checkpoints (.pt, .pth, .safetensors, .keras, .h5) or morph-net alive files",
        accept_multiple_files=True, key=state.CHECKPOINT_UPLOADS)
    for upload in uploads or []:
        label = st.sidebar.text_input(f"Label for {upload.name}", upload.name,
                                      key=state.LABEL_PREFIX + upload.name)
        try:
            structures.append((label, cache.structure_from_bytes(
                loaded.graph, loaded.key, upload.name, upload.getvalue())))
        except MorphScopeError as err:
            st.sidebar.error(str(err))
    return structures


def _solve_into_slider(model: Any, alive: np.ndarray, target: str, hardware: Any) -> None:
    """Button callback: set the width-factor slider to the factor matching the seed's cost."""
    from morphscope.analyzers.compare import matching_factor

    factor = matching_factor(model, alive, target, hardware)
    st.session_state[state.FACTOR] = float(np.floor(factor * 1000) / 1000)  # stay under budget


def explorer_view() -> None:
    from morphscope.analyzers import compare
    from morphscope.analyzers.hardware import HARDWARE, get_hardware

    st.title("MorphScope")
    loaded = _pick_model()
    if loaded is None:
        st.info("Upload a model file or pick a zoo model in the sidebar.")
        return
    graph, model = loaded.graph, loaded.model
    structures = _pick_checkpoints(loaded)

    threshold = st.sidebar.select_slider("Alive threshold on max |gamma|", THRESHOLDS, 1e-2,
                                         key=state.THRESHOLD)
    hardware = get_hardware(st.sidebar.selectbox("Hardware (latency)", sorted(HARDWARE),
                                                 index=sorted(HARDWARE).index("V100"), key=state.HARDWARE))
    st.session_state.setdefault(state.FACTOR, 1.0)
    factor = st.sidebar.slider("What-if width multiplier", 0.25, 3.0, step=0.001, format="%.3f",
                               key=state.FACTOR)

    alive = {label: compare.structure_widths(model, s["gammas"], s["alive_counts"], threshold)
             for label, s in structures}
    views = [compare.view_structure(model, label, widths, factor, hardware) for label, widths in alive.items()]
    seed = model.totals(model.seed_widths, hardware)

    st.caption(f"{graph.name}: {graph.framework}, input {'x'.join(map(str, graph.input_shape))}, "
               f"{len(graph)} ops. FLOPs = 2 x MACs; size = conv/linear kernel weights.")
    if views:
        target_label = st.sidebar.selectbox("Expand which structure", list(alive), key=state.EXPAND_TARGET)
        cols = st.sidebar.columns(2)
        for col, target in zip(cols, ("flops", "size")):
            col.button(f"Match {'FLOPs' if target == 'flops' else 'size'}", key=f"match_{target}",
                       help=f"Set the multiplier to the largest factor whose {target} stays within "
                            "the seed's", on_click=_solve_into_slider,
                       args=(model, alive[target_label], target, hardware))

    _metrics(seed, views)
    st.subheader("Layer widths")
    st.plotly_chart(figures.width_bars(compare.layer_widths(graph, model, views)), key="width_bars")
    if not views:
        st.info("Upload gamma checkpoints (or morph-net alive files) to compare learned structures.")
        return
    if loaded.key == BUNDLED:
        from morphscope.importers.load import example_cost_logs

        st.subheader("Target cost during training")
        st.plotly_chart(figures.cost_vs_step(example_cost_logs(BUNDLED)), key="cost_vs_step")
    _gamma_section(structures, threshold)
    _tradeoff_section(model, views, factor, hardware)
    _reports(graph, model, structures, alive, threshold)
    _downloads(graph, model, loaded, views, structures, threshold, factor)


def _metrics(seed: dict[str, Any], views: list[Any]) -> None:
    from morphscope.analyzers.compare import metrics_rows

    st.subheader(f"Costs: {views[0].label}, expanded" if views else "Costs: seed")
    cols = st.columns(4)
    first = views[0].expanded_totals if views else seed
    for col, (key, label, fmt) in zip(cols, (("flops", "FLOPs", human_count), ("params", "Params", human_count),
                                            ("size", "Size", human_count), ("latency_s", "Latency", human_seconds))):
        delta = f"{(first[key] / seed[key] - 1) * 100:+.1f}% vs seed" if views and seed[key] else None
        col.metric(label, fmt(first[key]), delta, delta_color="inverse",
                   help=f"{views[0].label} at the current threshold and width multiplier"
                   if views else "seed network")
    rows = metrics_rows(seed, views)
    st.dataframe(rows, key="metrics_table", hide_index=True,
                 column_config={"latency_s": st.column_config.NumberColumn(format="%.3e"),
                                **{f"{m} vs seed": st.column_config.NumberColumn(format="%.3f")
                                   for m in ("flops", "params", "size", "latency_s")}})


def _gamma_section(structures, threshold) -> None:
    from morphscope.analyzers.compare import gamma_magnitudes

    with_gammas = [(label, s["gammas"]) for label, s in structures if s["gammas"]]
    if not with_gammas:
        return
    st.subheader("|gamma| distribution")
    layers = sorted(with_gammas[0][1])
    layer = st.selectbox("Layer", ["whole network"] + layers, key=state.HIST_LAYER)
    chosen = None if layer == "whole network" else layer
    magnitudes = {label: gamma_magnitudes(g, chosen) for label, g in with_gammas if chosen is None or chosen in g}
    st.plotly_chart(figures.gamma_histogram(magnitudes, threshold), key="gamma_hist")


def _tradeoff_section(model, views, factor, hardware) -> None:
    from morphscope.analyzers.compare import matching_factor, tradeoff_curves

    st.subheader("Trade-off under a width multiplier")
    curves = tradeoff_curves(model, views, FACTORS, hardware)
    current = {"seed": factor, **{v.label: factor for v in views}}
    matched = {v.label: matching_factor(model, v.alive, "flops", hardware) for v in views}
    left, right = st.columns(2)
    left.plotly_chart(figures.tradeoff_figure(curves, FACTORS, current, matched, "params"), key="tradeoff_params")
    right.plotly_chart(figures.tradeoff_figure(curves, FACTORS, current, matched, "latency_s"), key="tradeoff_latency")


def _reports(graph, model, structures, alive, threshold) -> None:
    from morphscope.analyzers.alive import consistency_report, topology_report

    st.subheader("Groups and topology")
    for label, s in structures:
        topology = topology_report(graph, model.spaces, alive[label], s["gammas"], threshold)
        groups = consistency_report(model.spaces, s["gammas"], threshold)
        with st.expander(f"{label}: {len(topology.removable_blocks)} removable blocks, "
                         f"{len(topology.dead_towers)} dead towers, {sum(1 for g in groups if g.broken)} "
                         "groups with disagreeing channels"):
            st.dataframe([{"group": g.name, "members": ", ".join(g.members), "alive": g.alive,
                           "size": g.size, "disagreeing channels": len(g.broken)} for g in groups],
                         hide_index=True)
            st.dataframe([{"add": a, "branch": b, "why": r} for a, b, r in topology.removable_blocks]
                         + [{"add": c, "branch": t, "why": "dead tower (concat input)"}
                            for c, t in topology.dead_towers], hide_index=True)
            for note in s["notes"]:
                st.caption(note)
    pinned = [{"space": model.spaces.name_of(i), "channels": int(model.spaces.sizes[i]), "why": why}
              for i, why in sorted(model.spaces.pin_reasons.items())]
    with st.expander(f"Pinned spaces ({len(pinned)}): never pruned"):
        st.dataframe(pinned, hide_index=True)


def _downloads(graph, model, loaded, views, structures, threshold, factor) -> None:
    from morphscope.exporters.writers import layer_table, table_csv, widths_json

    st.subheader("Export")
    label = st.session_state.get(state.EXPAND_TARGET) or views[0].label
    view = next(v for v in views if v.label == label)
    stem = graph.name.split(":")[-1].split("/")[-1].split(".")[0]
    cols = st.columns(3)
    cols[0].download_button("Widths JSON (morph-net)", widths_json(graph, model, view.expanded),
                            file_name=f"{stem}_widths.json", mime="application/json", key="dl_widths")
    cols[1].download_button("Per-layer CSV", table_csv(layer_table(graph, model, view.alive, view.expanded)),
                            file_name=f"{stem}_layers.csv", mime="text/csv", key="dl_csv")
    if loaded.rebuild_spec is None:
        cols[2].caption("A .pt2 holds no rebuildable model: use the zoo or a Keras file to export one.")
        return
    if cols[2].button("Build morphed model", key="build_model"):
        with st.spinner("Rebuilding the model with the new widths..."):
            try:
                st.session_state[state.MODEL_FILE] = _rebuild_bytes(graph, model, loaded, structures,
                                                                    label, view, threshold, factor)
            except MorphScopeError as err:
                st.error(str(err))
    built = st.session_state.get(state.MODEL_FILE)
    if built:
        name, data, note = built
        cols[2].download_button(f"Download {name}", data, file_name=name, key="dl_model")
        cols[2].caption(note)


def _rebuild_bytes(graph, model, loaded, structures, label, view, threshold, factor):
    import tempfile
    from pathlib import Path

    from morphscope.analyzers.morph import Morphed, export_plan, plan_totals
    from morphscope.exporters.export import MODEL_SUFFIX, write_rebuilt_model

    gammas = dict(structures)[label]["gammas"]
    plan = export_plan(graph, model, Morphed(label, view.alive, None), factor, gammas, threshold)
    source = cache.framework_model(loaded.rebuild_spec, loaded.side)
    path = Path(tempfile.mkdtemp(prefix="morphscope_export_")) / f"morphed{MODEL_SUFFIX[graph.framework]}"
    params = write_rebuilt_model(source, graph, model, plan, path)
    note = f"{params:,} parameters (predicted {plan_totals(model, plan)['params']:,})"
    return path.name, path.read_bytes(), note
