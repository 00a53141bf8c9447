"""The explorer page: pick a model and checkpoints, compare seed and morphed structures."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from morphscope.errors import MorphScopeError
from morphscope.explorer import cache, figures, state
from morphscope.explorer.views import resolution, runs
from morphscope.explorer.views.common import plain, unique_labels, user_message
from morphscope.units import human_count, human_seconds

SOURCES = ("Bundled example", "Upload a file", "Zoo model")
ZOO_PREFIXES = ("torchvision:", "keras:")
BUNDLED = "example:digits"
THRESHOLDS = [float(f"{t:.1g}") for t in np.geomspace(1e-4, 0.5, 38)]
FACTORS = np.round(np.linspace(0.25, 3.0, 111), 4)
ROUND_TO_CHOICES = (1, 8, 16, 32, 64)


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
            previous = st.session_state.get(state.LAST_GOOD_MODEL)
            if upload is None and previous is not None:
                st.sidebar.text(f"Still showing {previous.graph.name} until a model file arrives.")  # a file's name: plain text
            if upload is not None:
                data = upload.getvalue()
                with st.spinner(f"Parsing {plain(upload.name)}..."):
                    graph, model, path = cache.model_from_upload(upload.name, data)
                loaded = LoadedModel(f"{upload.name}#{cache.content_key(data)}", graph, model, path)
        else:
            spec = st.sidebar.text_input("torchvision:NAME or keras:NAME", "torchvision:resnet18",
                                         key=state.ZOO_SPEC)
            side = int(st.sidebar.number_input("Input size (pixels)", 32, 1024, 224, key=state.ZOO_SIDE))
            if not spec.startswith(ZOO_PREFIXES) or spec in ZOO_PREFIXES:  # never a server path
                raise MorphScopeError(f"{spec!r}: name a zoo model as torchvision:NAME or keras:NAME "
                                      "(files go through 'Upload a file')")
            with st.spinner(f"Building and capturing {plain(spec)}..."):
                graph, model = cache.model_from_spec(spec, side)
            loaded = LoadedModel(f"{spec}@{side}", graph, model, spec, side)
    except MorphScopeError as err:
        st.sidebar.error(plain(user_message(err)))
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
    uploads = uploads or []
    for upload, default in zip(uploads, unique_labels([u.name for u in uploads])):
        # two uploads of the same name: told apart by a suffix, each with its own label box
        label = st.sidebar.text_input(f"Label for {plain(default)}", default,
                                      key=state.LABEL_PREFIX + upload.file_id)
        try:
            structures.append((label, cache.structure_from_bytes(
                loaded.graph, loaded.key, upload.name, upload.getvalue())))
        except MorphScopeError as err:
            st.sidebar.error(plain(user_message(err)))
    return structures


def _counting_controls(loaded: LoadedModel) -> Any:
    """Convention, prunable outputs and output boundary: the width model they give."""
    from morphscope.analyzers.conventions import CONVENTIONS, DEFAULT_CONVENTION, PRUNE_OUTPUTS

    with st.sidebar.expander("Counting and analysed part"):
        convention = st.selectbox("Convention", list(CONVENTIONS), key=state.CONVENTION,
                                  help="physical: what the hardware does; morph-net: exactly "
                                  "morph-net's numbers (README: morph-net conventions)")
        prune = st.selectbox("Prune model outputs", PRUNE_OUTPUTS, key=state.PRUNE_OUTPUTS,
                             help="feature-maps: outputs with spatial dimensions (a backbone's "
                             "maps) may shrink, logits stay; all: morph-net's choice")
        boundary = st.text_input("Analyse up to op (output boundary)", key=state.OUTPUT_BOUNDARY,
                                 help="e.g. a detector's last backbone op: the rest keeps its "
                                 "widths, its cost still counts").strip()
    if (convention, prune, boundary) == (DEFAULT_CONVENTION, "none", ""):
        return loaded.model
    try:
        return cache.scoped_model(loaded.graph, loaded.key, convention, prune, boundary)
    except MorphScopeError as err:
        st.sidebar.error(plain(user_message(err)))
        return loaded.model


def _solve_into_slider(model: Any, alive: np.ndarray, target: str, hardware: Any, round_to: int) -> None:
    """Button callback: set the width-factor slider to the factor matching the seed's cost."""
    from morphscope.analyzers.compare import matching_factor

    factor = matching_factor(model, alive, target, hardware, round_to)
    st.session_state[state.MATCHED_TARGET] = target
    st.session_state[state.FACTOR] = float(np.floor(factor * 1000) / 1000)  # stay under budget


def explorer_view() -> None:
    from morphscope.analyzers import compare
    from morphscope.analyzers.hardware import HARDWARE, get_hardware, profile_from_bytes
    from morphscope.importers.load import EXAMPLES_DIR

    st.title("MorphScope")
    loaded = _pick_model()
    if loaded is None:
        st.info("Upload a model file or pick a zoo model in the sidebar.")
        return
    graph, model = loaded.graph, _counting_controls(loaded)
    structures = _pick_checkpoints(loaded)
    example_dir = EXAMPLES_DIR / "digits" if loaded.key == BUNDLED else None
    picked_runs = runs.pick_runs(example_dir)

    threshold = st.sidebar.select_slider("Alive threshold on max |gamma|", THRESHOLDS, 1e-2,
                                         key=state.THRESHOLD)
    hardware = get_hardware(st.sidebar.selectbox("Hardware (latency)", sorted(HARDWARE),
                                                 index=sorted(HARDWARE).index("V100"), key=state.HARDWARE))
    profile = st.sidebar.file_uploader("Latency profile (.json, from morphscope profile)", type=["json"],
                                       key=state.PROFILE_UPLOAD, help="Measured on your machine: replaces the "
                                       "roofline above for every latency on the page")
    if profile is not None:
        try:
            hardware = profile_from_bytes(profile.getvalue(), profile.name)
        except MorphScopeError as err:
            st.sidebar.error(plain(user_message(err)))
    st.sidebar.caption(f"Latency: {plain(hardware.prediction)}.")
    st.session_state.setdefault(state.FACTOR, 1.0)
    factor = st.sidebar.slider("What-if width multiplier", 0.25, 3.0, step=0.001, format="%.3f",
                               key=state.FACTOR)
    round_to = st.sidebar.selectbox("Round widths to multiples of", ROUND_TO_CHOICES, key=state.ROUND_TO,
                                    help="Hardware alignment: 8 for tensor cores. Every pruned width "
                                         "is rounded up; tied layers stay equal.")

    st.caption(f"{plain(graph.name)}: {graph.framework}, input {'x'.join(map(str, graph.input_shape))}, "
               f"{len(graph)} ops. FLOPs = 2 x MACs; size = conv/linear kernel weights.")
    costs_area = st.container()  # filled once the runs' selected steps are known
    if picked_runs:
        structures = structures + runs.runs_section(graph, model, loaded.key, picked_runs, hardware)
    labels = unique_labels([label for label, _ in structures])
    structures = list(zip(labels, (s for _, s in structures)))

    alive = {label: compare.structure_widths(model, s["gammas"], s["alive_counts"], threshold)
             for label, s in structures}
    views = [compare.view_structure(model, label, widths, factor, hardware, round_to)
             for label, widths in alive.items()]
    seed = model.totals(model.seed_widths, hardware)
    selected = None
    if views:
        target_label = st.sidebar.selectbox("Structure (cards, expand, table, downloads)", list(alive),
                                            key=state.EXPAND_TARGET)
        selected = next(v for v in views if v.label == target_label)
        cols = st.sidebar.columns(2)
        for col, target in zip(cols, ("flops", "size")):
            col.button(f"Match {'FLOPs' if target == 'flops' else 'size'}", key=f"match_{target}",
                       help=f"Set the multiplier to the largest factor whose {target} stays within "
                            "the seed's", on_click=_solve_into_slider,
                       args=(model, alive[target_label], target, hardware, round_to))

    with costs_area:
        _metrics(seed, views, selected)
    resolution.width_section(graph, model, views)
    if not views:
        st.info("Upload gamma checkpoints, morph-net alive files or training runs to compare "
                "learned structures.")
        _tradeoff_section(model, views, factor, hardware, round_to)
        return
    resolution.kept_section(graph, model, views)
    resolution.layer_table_section(graph, model, selected)
    if example_dir is not None:
        resolution.result_section(example_dir)
    _gamma_section(structures, threshold)
    _tradeoff_section(model, views, factor, hardware, round_to)
    _reports(graph, model, structures, alive, threshold)
    _downloads(graph, model, loaded, selected, structures, threshold, factor, round_to)
    _measured(graph, model, loaded, selected, structures, threshold, factor, round_to, hardware)


def _metrics(seed: dict[str, Any], views: list[Any], selected: Any) -> None:
    from morphscope.analyzers.compare import metrics_rows

    expanded = selected is not None and selected.is_expanded
    st.subheader(f"Costs: {plain(selected.label)}" + (", expanded" if expanded else "") if selected else "Costs: seed")
    cols = st.columns(4)
    shown = selected.expanded_totals if selected else seed
    for col, (key, card, fmt) in zip(cols, (("flops", "FLOPs", human_count), ("params", "Params", human_count),
                                           ("size", "Size", human_count), ("latency_s", "Latency", human_seconds))):
        delta = f"{(shown[key] / seed[key] - 1) * 100:+.1f}% vs seed" if selected and seed[key] else None
        col.metric(card, fmt(shown[key]), delta, delta_color="inverse",
                   help=f"{plain(selected.label)} at the current threshold and width multiplier"
                   if selected else "seed network")
    rows = metrics_rows(seed, views)
    count = st.column_config.NumberColumn(format="localized")
    st.dataframe(rows, key="metrics_table", hide_index=True,
                 column_config={"flops": count, "params": count, "size": count,
                                "latency_s": st.column_config.NumberColumn("latency (s)", format="%.3e"),
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


def _tradeoff_section(model, views, factor, hardware, round_to) -> None:
    from morphscope.analyzers.compare import matching_factor, tradeoff_curves

    st.subheader("Trade-off under a width multiplier")
    resource = st.session_state.get(state.MATCHED_TARGET, "flops")
    curves = tradeoff_curves(model, views, FACTORS, hardware, round_to)
    current = {"seed": factor, **{v.label: factor for v in views}}
    matched = {v.label: matching_factor(model, v.alive, resource, hardware, round_to) for v in views}
    left, right = st.columns(2)
    for column, y in ((left, "params"), (right, "latency_s")):
        column.plotly_chart(figures.tradeoff_figure(curves, FACTORS, current, matched, y, resource, hardware.label),
                            key=f"tradeoff_{y.split('_')[0]}")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    """A table that keeps its headers when it has no rows."""
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def _reports(graph, model, structures, alive, threshold) -> None:
    from morphscope.analyzers.alive import consistency_report, topology_report

    st.subheader("Groups and topology")
    for label, s in structures:
        topology = topology_report(graph, model.spaces, alive[label], s["gammas"], threshold)
        groups = consistency_report(model.spaces, s["gammas"], threshold)
        with st.expander(f"{plain(label)}: {len(topology.removable_blocks)} removable blocks, "
                         f"{len(topology.dead_towers)} dead towers, {sum(1 for g in groups if g.broken)} "
                         "groups with disagreeing channels"):
            st.dataframe(_table([{"group": g.name, "members": ", ".join(g.members), "alive": g.alive,
                                  "size": g.size, "disagreeing channels": len(g.broken)} for g in groups],
                                ["group", "members", "alive", "size", "disagreeing channels"]),
                         hide_index=True)
            st.dataframe(_table([{"add": a, "branch": b, "why": r} for a, b, r in topology.removable_blocks]
                                + [{"add": c, "branch": t, "why": "dead tower (concat input)"}
                                   for c, t in topology.dead_towers], ["add", "branch", "why"]),
                         hide_index=True)
            for note in s["notes"]:
                st.caption(plain(note))
    pinned = [{"space": model.spaces.name_of(i), "channels": int(model.spaces.sizes[i]), "why": why}
              for i, why in sorted(model.spaces.pin_reasons.items())]
    with st.expander(f"Pinned spaces ({len(pinned)}): never pruned"):
        st.dataframe(_table(pinned, ["space", "channels", "why"]), hide_index=True)


def _downloads(graph, model, loaded, view, structures, threshold, factor, round_to) -> None:
    from morphscope.exporters.writers import layer_table, table_csv, widths_json

    st.subheader(f"Export: {plain(view.label)}")
    label = view.label
    stem = download_stem(graph.name, label, factor, round_to)
    cols = st.columns(3)
    cols[0].download_button("Widths JSON (morph-net)", widths_json(graph, model, view.expanded),
                            file_name=f"{stem}_widths.json", mime="application/json", key="dl_widths")
    cols[1].download_button("Per-layer CSV", table_csv(layer_table(graph, model, view.alive, view.expanded)),
                            file_name=f"{stem}_layers.csv", mime="text/csv", key="dl_csv")
    built_from = (loaded.key, label, threshold, factor, round_to)  # a download is of exactly these
    if cols[2].button("Build morphed model", key="build_model"):
        with st.spinner("Rebuilding the model with the new widths..."):
            try:
                st.session_state[state.MODEL_FILE] = (built_from, *_rebuild_bytes(
                    graph, model, loaded, structures, label, view, threshold, factor, round_to))
            except MorphScopeError as err:
                st.error(plain(user_message(err)))
    built = st.session_state.get(state.MODEL_FILE)
    if built and built[0] == built_from:
        _, name, data, note = built
        cols[2].download_button(f"Download {plain(name)}", data, file_name=name, key="dl_model")
        cols[2].caption(plain(note))


def _measured(graph, model, loaded, view, structures, threshold, factor, round_to, hardware) -> None:
    """Time the seed and the selected structure's rebuilt model on this server, on a button."""
    from morphscope.exporters.timing import measure_rebuild

    st.subheader("Measured on this server")
    st.caption("Rebuilds the seed and the selected structure (at the multiplier and rounding above) and times "
               "each forward pass here: PyTorch, batch 1, median of 20 calls after 5 warm-up calls. The "
               "predicted column is the hardware chosen in the sidebar.")
    measured_for = (loaded.key, view.label, threshold, factor, round_to, hardware.name)
    if st.button("Time seed and morphed", key="measure"):
        bar = st.progress(0.0, text="starting")
        steps = iter((0.1, 0.55))

        def progress(text: str) -> None:
            bar.progress(next(steps, 0.9), text=text)

        try:
            source = cache.framework_model(loaded.rebuild_spec, loaded.side)
            result = measure_rebuild(source, graph, model, _plan_of(graph, model, structures, view, threshold,
                                                                    factor, round_to, source),
                                     hardware, progress=progress)
            st.session_state[state.MEASURED] = (measured_for, result)
        except MorphScopeError as err:
            st.error(plain(user_message(err)))
        bar.empty()
    shown = st.session_state.get(state.MEASURED)
    if not shown or shown[0] != measured_for:
        return
    result = shown[1]
    st.dataframe([{"model": label, "measured (median)": human_seconds(result[label]["measured_s"]),
                   "min - max": f"{human_seconds(result[label]['min_s'])} - {human_seconds(result[label]['max_s'])}",
                   "predicted": human_seconds(result[label]["predicted_s"]),
                   "prediction error": f"{result[label]['error']:+.0%}"} for label in ("seed", "morphed")],
                 hide_index=True, key="measured_table")
    st.caption(f"Speedup {result['speedup_measured']:.2f}x measured, {result['speedup_predicted']:.2f}x predicted. "
               f"Measured on {plain(result['machine'])}, PyTorch {result['threads']} threads, batch {result['batch']}; "
               f"predicted: {plain(result['prediction'])}.")


def _plan_of(graph, model, structures, view, threshold, factor, round_to, source):
    """The export plan of the selected structure (a .pt2 program keeps every op)."""
    from morphscope.analyzers.morph import Morphed, export_plan
    from morphscope.importers.objects import is_pt2

    gammas = dict(structures)[view.label]["gammas"]
    return export_plan(graph, model, Morphed(view.label, view.alive, None), factor, gammas, threshold,
                       round_to, remove_blocks=not is_pt2(source))


def download_stem(model_name: str, label: str, factor: float, round_to: int) -> str:
    """A download's file name: model, structure, multiplier and rounding, in safe characters
    (``resnet18_flops-gammas_x1.250_r8``); names come from users, so nothing else passes."""
    model = model_name.split(":")[-1].split("/")[-1].split(".")[0]
    safe = [re.sub(r"[^A-Za-z0-9]+", "-", part).strip("-")[:40] or "model" for part in (model, label)]
    return f"{safe[0]}_{safe[1]}_x{factor:.3f}" + (f"_r{round_to}" if round_to > 1 else "")


def _rebuild_bytes(graph, model, loaded, structures, label, view, threshold, factor, round_to):
    from morphscope.analyzers.morph import plan_totals
    from morphscope.exporters.export import MODEL_SUFFIX, rebuilt_model_bytes

    source = cache.framework_model(loaded.rebuild_spec, loaded.side)
    plan = _plan_of(graph, model, structures, view, threshold, factor, round_to, source)
    data, params = rebuilt_model_bytes(source, graph, model, plan)
    name = download_stem(graph.name, label, factor, round_to) + MODEL_SUFFIX[graph.framework]
    return name, data, f"{params:,} parameters (predicted {plan_totals(model, plan)['params']:,})"
