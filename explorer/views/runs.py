"""Training runs on the explorer page: cost against step, each layer's width against step, a
step selector per run (the selected step is a structure for the rest of the page) and, for
several runs, final cost against a logged metric."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from morphscope.errors import MorphScopeError
from morphscope.explorer import cache, figures, state
from morphscope.explorer.views.common import plain, unique_labels, user_message

MAX_DRAWN_STEPS = 400  # columns of a heatmap, points of a cost line: drawn, not computed
TOTALS_KEY = {"latency": "latency_s"}  # a run's target -> the totals key holding it
BUNDLED_RUNS = {"FLOPs run": "flops_structure", "size run": "size_structure"}


def pick_runs(bundled_dir: Any = None) -> list[tuple[Any, str]]:
    """Sidebar: the run uploader (a .zip of run folders, or alive_<step> files and cost.jsonl)
    and, for the bundled example, its two training runs. Returns ``(run, content key)`` pairs,
    runs of one name told apart (``run``, ``run (2)``); a bad upload shows its error and the
    other runs stay, and files an upload held besides its runs are listed."""
    from dataclasses import replace

    from morphscope.importers.runs import run_from_dir

    runs: list[tuple[Any, str]] = []
    if bundled_dir is not None and st.sidebar.checkbox(
            "Show the example's training runs", key=state.EXAMPLE_RUNS,
            help="The FLOP- and size-regularized runs' StructureLogger folders"):
        for label, folder in BUNDLED_RUNS.items():
            run = run_from_dir(bundled_dir / folder)
            runs.append((replace(run, name=label), "example"))
    uploads = st.sidebar.file_uploader(
        "Training runs (.zip of StructureLogger or learned_structure folders, or alive_<step> "
        "files and cost.jsonl)", accept_multiple_files=True, key=state.RUN_UPLOADS)
    if uploads:
        files = tuple((u.name, u.getvalue()) for u in uploads)
        try:
            loaded = cache.runs_from_uploads(files)
        except MorphScopeError as err:
            st.sidebar.error(plain(user_message(err)))
        else:
            key = cache.content_key(b"".join(name.encode() + data for name, data in files))
            runs.extend((run, key) for run in loaded)
    for run, _ in runs:
        for note in run.notes:
            st.sidebar.info(plain(note))
    labels = unique_labels([run.name for run, _ in runs])  # the content key of each run, too
    return [(replace(run, name=label), f"{key}/{label}") for (run, key), label in zip(runs, labels)]


def runs_section(graph: Any, model: Any, graph_key: str, runs: list[tuple[Any, str]],
                 hardware: Any) -> list[tuple[str, dict[str, Any]]]:
    """Draw the runs and return the structure at each run's selected step, labelled with the
    run's name."""
    from morphscope.analyzers.runs import costs_per_step, final_metric, log_target, logged_series, thin_indices

    st.subheader("Training runs")
    seed = model.totals(model.seed_widths, hardware)
    structures, series, selected, drawn_runs, strengths = [], {}, {}, [], {}
    for run, key in runs:
        try:
            steps = cache.run_steps(graph, model, graph_key, run, key)
        except MorphScopeError as err:
            st.error(plain(user_message(err)))
            continue
        target = log_target(run.log)
        costs = costs_per_step(model, steps["widths"], hardware)
        cost_key = TOTALS_KEY.get(target, target)
        if cost_key not in costs:  # a log naming a resource we do not count: show FLOPs
            target, cost_key = "flops", "flops"
        share = costs[cost_key] / max(seed[cost_key], 1e-30)
        budget = final_metric(run.log, "budget") if target == log_target(run.log) else None
        step = st.select_slider(f"{plain(run.name)}: step", options=list(run.steps), value=run.steps[-1],
                                key=state.RUN_STEP_PREFIX + run.name,
                                help="This step's structure is used by the rest of the page")
        i = run.steps.index(step)
        drawn = thin_indices(len(run.steps), MAX_DRAWN_STEPS)
        series[run.name] = {"steps": np.asarray(run.steps)[drawn], "share": share[drawn], "target": target,
                            "selected_share": float(share[i]), "final_share": float(share[-1]),
                            "budget_share": None if budget is None else budget / max(seed[cost_key], 1e-30)}
        strength_steps, strength = logged_series(run.log, "strength")
        if strength_steps.size:
            drawn_strength = thin_indices(strength_steps.size, MAX_DRAWN_STEPS)
            strengths[run.name] = (strength_steps[drawn_strength], strength[drawn_strength])
        selected[run.name] = step
        drawn_runs.append((run, steps, drawn, step))
        structures.append((run.name,  # a stable label: choices keyed by it survive step moves
                           {"gammas": {}, "alive_counts": steps["counts"][i],
                            "notes": [f"{run.name}: the structure logged at step {step:,}"]}))
    if not series:
        return structures
    st.plotly_chart(figures.run_costs(series, selected), key="run_costs")
    if strengths:
        st.plotly_chart(figures.run_strengths(strengths), key="run_strengths")
    for number, (run, steps, drawn, step) in enumerate(drawn_runs):
        st.plotly_chart(figures.run_heatmap(run.name, np.asarray(run.steps)[drawn], steps["layers"],
                                            steps["shares"][:, drawn], step), key=f"run_heatmap_{number}")
    _sweep([run for run, *_ in drawn_runs], series)
    return structures


def _sweep(runs: list[Any], series: dict[str, dict[str, Any]]) -> None:
    """Several runs with a logged metric (a sweep of strengths): final cost against it."""
    from morphscope.analyzers.runs import final_metric, metric_names

    metrics = sorted({m for run in runs for m in metric_names(run.log)})
    logged = [run for run in runs if run.log]
    if len(logged) < 2 or not metrics:
        return
    st.markdown("**Runs: final cost against a logged metric**")
    metric = st.selectbox("Metric", metrics, key=state.SWEEP_METRIC)
    points = {f"{run.name} ({series[run.name]['target']})": (series[run.name]["final_share"], value)
              for run in logged if (value := final_metric(run.log, metric)) is not None}
    st.plotly_chart(figures.sweep_scatter(points, metric), key="sweep_scatter")
