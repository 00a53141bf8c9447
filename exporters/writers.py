"""Exports as plain text: morph-net's widths JSON and a per-layer CSV/JSON table."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

from morphscope.analyzers.morph import source_op_widths
from morphscope.analyzers.widths import WidthModel
from morphscope.graph import ChannelGraph


def widths_json(graph: ChannelGraph, model: WidthModel, widths: np.ndarray) -> str:
    """morph-net StructureExporter form: ``{op name: alive channels}`` for every source op
    (conv, linear), ``json.dumps(..., indent=2, sort_keys=True)``."""
    return json.dumps(source_op_widths(graph, model, widths), indent=2, sort_keys=True)


TABLE_COLUMNS = ("layer", "kind", "seed_width", "alive_width", "expanded_width",
                 "seed_macs", "alive_macs", "expanded_macs", "seed_params", "alive_params",
                 "expanded_params")


def layer_table(graph: ChannelGraph, model: WidthModel, alive: np.ndarray,
                expanded: np.ndarray) -> list[dict[str, Any]]:
    """One row per source op: output width, MACs and parameters for seed, alive and expanded
    widths (plain ints, ready for CSV or JSON)."""
    seed = model.seed_widths
    per = {label: model.per_op(w) for label, w in (("seed", seed), ("alive", alive),
                                                   ("expanded", expanded))}
    widths = {label: source_op_widths(graph, model, w)
              for label, w in (("seed", seed), ("alive", alive), ("expanded", expanded))}
    rows = []
    for name in widths["seed"]:
        i = model.costs.index[name]
        row: dict[str, Any] = {"layer": name, "kind": graph[name]["kind"].value}
        for label in ("seed", "alive", "expanded"):
            row[f"{label}_width"] = widths[label][name]
        for label in ("seed", "alive", "expanded"):
            row[f"{label}_macs"] = int(round(float(per[label]["macs"][i])))
        for label in ("seed", "alive", "expanded"):
            row[f"{label}_params"] = int(round(float(per[label]["params"][i])))
        rows.append(row)
    return rows


def table_csv(rows: list[dict[str, Any]]) -> str:
    """The layer table as CSV text with a header row."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
