"""Seeded mutation fuzzer: a few hundred mutations of valid files of every format through
``morphscope report``: zero tracebacks (only exit status 0 or 2 with one line), zero hangs.

Mutations: bit flips, truncation, deleted and duplicated spans, and inside zip archives (.pt2,
.keras) the same on one member, rewritten with a valid CRC, or a JSON value swapped for another
type, so the parsers behind the zip and JSON layers are reached too; a safetensors header gets
the JSON swaps with its length rewritten (or left lying). Training runs zips (what the
explorer's run uploader reads) get the zip and JSON mutations through the runs parser.
"""

import io
import json
import random
import time
import zipfile
from pathlib import Path

import pytest

from morphscope.cli.main import main
from morphscope.importers.load import load_model

# format -> (cases, role): "model" files are MODEL, checkpoints go with the matching graph.
PLAN = {".pt2": (32, "model"), ".json": (32, "model"), ".keras": (16, "model"), ".h5": (16, "model"),
        ".pt": (32, "checkpoint"), ".safetensors": (32, "checkpoint"), ".weights.h5": (32, "checkpoint"),
        "alive": (32, "checkpoint")}
KERAS_FORMATS = {".keras", ".h5", ".weights.h5"}
MAX_CASE_S = 60  # a case slower than this is a hang (the worker's wall limit is 120 s)
ODD_VALUES = [None, -1, 0, 2**63, 1e308, "x", [], {}, [[[]]], {"a": {"b": []}}, True, "../../etc/passwd"]


def flip_bits(data, rng):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def truncate(data, rng):
    return data[:rng.randrange(len(data))]


def delete_span(data, rng):
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 64):]


def duplicate_span(data, rng):
    i = rng.randrange(len(data))
    return data[:i] + data[i:i + rng.randint(1, 64)] * rng.randint(2, 4) + data[i:]


BYTE_MUTATIONS = [flip_bits, truncate, delete_span, duplicate_span]


def swap_json_value(data, rng):
    """Replace one value somewhere in a JSON document by a value of another type (or drop a key)."""
    doc = json.loads(data)
    holders = []
    stack = [doc]
    while stack:
        item = stack.pop()
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else []
        for key, value in children:
            holders.append((item, key))
            stack.append(value)
    if not holders:
        return json.dumps(rng.choice(ODD_VALUES)).encode()
    holder, key = rng.choice(holders)
    if isinstance(holder, dict) and rng.random() < 0.25:
        del holder[key]
    else:
        holder[key] = rng.choice(ODD_VALUES)
    return json.dumps(doc).encode()


def mutate_zip(data, rng):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        items = {info.filename: archive.read(info) for info in archive.infolist()}
    name = rng.choice(sorted(items))
    json_members = [n for n in items if n.endswith(".json")]
    roll = rng.random()
    if roll < 0.4 and json_members:
        name = rng.choice(json_members)
        items[name] = swap_json_value(items[name], rng)
    elif roll < 0.8 and items[name]:
        items[name] = rng.choice(BYTE_MUTATIONS)(items[name], rng)
    elif roll < 0.9:
        del items[name]
    else:
        items[name.replace("/", "/x", 1) if "/" in name else "x" + name] = items.pop(name)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, content in items.items():
            archive.writestr(member, content)
    return buffer.getvalue()


def mutate_safetensors_header(data, rng):
    """A safetensors file whose JSON header (after the 8-byte length) has one value swapped,
    its length field rewritten to fit, or, one time in four, left as it was (a lying length)."""
    length = int.from_bytes(data[:8], "little")
    header = swap_json_value(data[8:8 + length], rng)
    declared = len(header) if rng.random() < 0.75 else length
    return declared.to_bytes(8, "little") + header + data[8 + length:]


def mutate(fmt, data, rng):
    if fmt in (".pt2", ".keras") and rng.random() < 0.7:
        return mutate_zip(data, rng)
    if fmt == ".safetensors" and rng.random() < 0.6:
        return mutate_safetensors_header(data, rng)
    if fmt in (".json", "alive") and rng.random() < 0.6:
        return swap_json_value(data, rng)
    mutated = rng.choice(BYTE_MUTATIONS)(data, rng)
    return mutated or b"\0"


@pytest.fixture(scope="module")
def graphs(seeds, tmp_path_factory):
    """Graph .json files the checkpoints are matched against (torch and Keras)."""
    folder = tmp_path_factory.mktemp("graphs")
    keras_graph = folder / "keras.json"
    keras_graph.write_text(load_model(str(seeds[".keras"])).to_json())
    return {"torch": Path(seeds[".json"]), "keras": keras_graph}


@pytest.mark.parametrize("fmt", sorted(PLAN))
def test_mutated_files_give_one_line_errors_never_tracebacks(seeds, graphs, tmp_path, capsys, fmt):
    cases, role = PLAN[fmt]
    seed = Path(seeds[fmt]).read_bytes()
    rng = random.Random(f"morphscope-fuzz-{fmt}")  # seeded: a failure replays exactly
    outcomes = {0: 0, 2: 0}
    for case in range(cases):
        path = tmp_path / f"case{case}" / Path(seeds[fmt]).name  # the seed's name: it picks the reader
        path.parent.mkdir()
        path.write_bytes(mutate(fmt, seed, rng))
        graph = graphs["keras" if fmt in KERAS_FORMATS else "torch"]
        argv = ["report", str(path), "--json"] if role == "model" else \
            ["report", str(graph), "--checkpoint", str(path), "--json"]
        started = time.monotonic()
        status = main(argv)  # anything but a MorphScopeError raises here and fails the test
        assert time.monotonic() - started < MAX_CASE_S, f"case {case} of {fmt} took too long"
        out, err = capsys.readouterr()
        assert status in outcomes, (case, status, err)
        outcomes[status] += 1
        if status == 2:
            assert out == "" and err.startswith("morphscope: error: ") and err.count("\n") == 1, (case, err)
        else:
            json.loads(out)  # a valid report
    assert outcomes[2] > 0  # the mutations do break files


def _runs_zip() -> bytes:
    """Two StructureLogger folders: alive files and a cost log with a metric."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for run in ("flops", "size"):
            for step in (0, 10, 20):
                archive.writestr(f"{run}/alive_{step}", json.dumps({"conv1/Conv2D": 8 - step // 10, "fc/MatMul": 4}))
            archive.writestr(f"{run}/cost.jsonl", "".join(
                json.dumps({"step": step, "target": "flops", "cost": 1e6 - step, "loss": 0.5, "val_accuracy": 0.9})
                + "\n" for step in (0, 10, 20)))
    return buffer.getvalue()


def test_mutated_runs_zips_give_one_line_errors_never_tracebacks():
    from morphscope.errors import MorphScopeError
    from morphscope.importers.runs import runs_from_uploads

    seed = _runs_zip()
    rng = random.Random("morphscope-fuzz-runs")
    outcomes = {"runs": 0, "refused": 0}
    for case in range(64):
        data = mutate_zip(seed, rng) if rng.random() < 0.8 else rng.choice(BYTE_MUTATIONS)(seed, rng)
        try:
            runs = runs_from_uploads([("runs.zip", data)])  # anything but a MorphScopeError fails the test
        except MorphScopeError as err:
            assert "\n" not in str(err) and str(err).startswith("runs"), (case, str(err))  # runs.zip or runs/<member>
            outcomes["refused"] += 1
        else:
            assert all(list(run.steps) == sorted(run.steps) for run in runs), case
            outcomes["runs"] += 1
    assert outcomes["refused"] > 0 and outcomes["runs"] > 0  # the mutations break some, not all
