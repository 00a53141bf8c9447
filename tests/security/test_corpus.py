"""Hostile files, written by the tests: each gets its one-line error within its limit, and
nothing they carry runs (issue 13). Files go through the isolated worker, as the CLI and the
app send them."""

import copy
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from morphscope.errors import CheckpointMismatchError, UnsafeFileError, UnsupportedFileError
from morphscope.graph import ChannelGraph
from morphscope.importers.checkpoints import load_structure
from morphscope.importers.limits import Limits
from morphscope.importers.load import load_model

DEEP = 100_000  # nesting levels of the deep-JSON files


def one_line(err):
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def rezip(src, dst, replace=None, extra=None):
    """Copy a zip archive, replacing members by name suffix and adding members."""
    with zipfile.ZipFile(src) as archive:
        items = {info.filename: archive.read(info) for info in archive.infolist()}
    for suffix, data in (replace or {}).items():
        items[next(k for k in items if k.endswith(suffix))] = data
    items.update(extra or {})
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in items.items():
            archive.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def torch_graph(seeds):
    return ChannelGraph.from_json(Path(seeds[".json"]).read_text())


BOMB = b" " * (64 * 2**20)  # 64 MB of spaces deflate about 1000x, over the 200x limit


@pytest.mark.parametrize("seed, member", [(".pt2", "models/model.json"), (".keras", "config.json")])
def test_zip_bomb_in_a_model_is_refused_before_inflating(seeds, tmp_path, seed, member):
    path = rezip(seeds[seed], tmp_path / f"bomb{seed}", replace={member: BOMB})
    with pytest.raises(UnsupportedFileError) as err:
        load_model(str(path))
    assert one_line(err).startswith(f"{path}: zip member ")
    assert "limit 200x (a zip bomb?)" in str(err.value)


@pytest.mark.parametrize("seed, member", [(".keras", "model.weights.h5"), (".pt", "data.pkl")])
def test_zip_bomb_in_a_checkpoint_is_refused(seeds, tmp_path, torch_graph, seed, member):
    path = rezip(seeds[seed], tmp_path / f"bomb{seed}", replace={member: BOMB})
    with pytest.raises(UnsupportedFileError, match=r"inflates \d[\d,]*x to 64 MB; limit 200x") as err:
        load_structure(torch_graph, path)
    one_line(err)


def test_safetensors_header_declaring_a_huge_tensor_is_refused(tmp_path, torch_graph):
    header = json.dumps({"bn_dw.weight": {"dtype": "F32", "shape": [100000, 100000],
                                          "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    # 100000 * 100000 * 4 bytes = 37.3 GB against the 2 GB tensor limit
    with pytest.raises(UnsupportedFileError, match=r"huge.safetensors: tensor bn_dw.weight declares "
                       r"shape \[100000, 100000\] \(37.3 GB\); limit 2 GB"):
        load_structure(torch_graph, path)


def test_safetensors_offsets_outside_the_file_are_refused(tmp_path, torch_graph):
    header = json.dumps({"bn_dw.weight": {"dtype": "F32", "shape": [13], "data_offsets": [0, 52]}}).encode()
    path = tmp_path / "short.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(UnsupportedFileError, match=r"offsets \[0, 52\] do not fit shape \[13\] and the file"):
        load_structure(torch_graph, path)


def test_hdf5_dataset_declaring_a_huge_shape_is_refused(seeds, tmp_path):
    import h5py

    path = tmp_path / "huge.weights.h5"
    path.write_bytes(Path(seeds[".weights.h5"]).read_bytes())
    with h5py.File(path, "a") as f:
        f.create_dataset("layers/extra/vars/0", shape=(10**6, 10**6), chunks=(1, 1), dtype="f4")
    graph = load_model(str(seeds[".keras"]))
    # 10**6 * 10**6 * 4 bytes = 3.64 TB, declared but never written: the file stays small
    with pytest.raises(UnsupportedFileError, match=r"tensor /layers/extra/vars/0 declares shape "
                       r"\[1000000, 1000000\] \(3.64 TB\)"):
        load_structure(graph, path)


def test_keras_config_declaring_billions_of_parameters_is_refused_before_building(seeds, tmp_path):
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 1000, 1000, 3]}},
        {"class_name": "Flatten", "config": {}, "build_config": {"input_shape": [None, 1000, 1000, 3]}},
        {"class_name": "Dense", "config": {"units": 1000}, "build_config": {"input_shape": [None, 3000000]}}]}}
    path = rezip(seeds[".keras"], tmp_path / "big.keras", replace={"config.json": json.dumps(config).encode()})
    assert path.stat().st_size < 2**20
    # Dense: 1000*1000*3 inputs * 1000 units + 1000 biases = 3,000,001,000 parameters
    with pytest.raises(UnsupportedFileError, match="big.keras: the model config declares "
                       r"3,000,001,000 parameters \(about 11.2 GB in float32\); limit 2,000,000,000"):
        load_model(str(path))


def test_deep_json_in_every_json_reader_is_refused(seeds, tmp_path, torch_graph):
    deep = b"[" * DEEP + b"]" * DEEP
    pt2 = rezip(seeds[".pt2"], tmp_path / "deep.pt2", replace={"models/model.json": deep})
    graph_json = tmp_path / "deep.json"
    graph_json.write_bytes(deep)
    alive = tmp_path / "alive_7"
    alive.write_bytes(b'{"a": ' + deep + b"}")
    for path in (pt2, graph_json):
        with pytest.raises(UnsupportedFileError, match=f"{path.name}: .* nests 100,000 levels deep; limit 100"):
            load_model(str(path))
    with pytest.raises(UnsupportedFileError, match="alive_7: alive file nests 100,001 levels deep; limit 100"):
        load_structure(torch_graph, alive)


def long_chain(src, dst, n_ops):
    """A .pt2 whose graph is ``n_ops`` chained ReLUs, cloned from a small export's JSON."""
    with zipfile.ZipFile(src) as archive:
        member = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        doc = json.loads(archive.read(member))
    graph = doc["graph_module"]["graph"]
    template = next(n for n in graph["nodes"] if n["target"] == "torch.ops.aten.relu.default")
    first = doc["graph_module"]["signature"]["input_specs"]
    source = next(s["user_input"]["arg"]["as_tensor"]["name"] for s in first if "user_input" in s)
    meta = graph["tensor_values"][source]
    nodes, previous = [], source
    for i in range(n_ops):
        node = copy.deepcopy(template)
        node["name"] = node["outputs"][0]["as_tensor"]["name"] = f"chain_{i}"
        node["inputs"][0]["arg"]["as_tensor"]["name"] = previous
        graph["tensor_values"][f"chain_{i}"] = meta
        nodes.append(node)
        previous = f"chain_{i}"
    graph["nodes"] = nodes
    graph["outputs"] = [{"as_tensor": {"name": previous}}]
    doc["graph_module"]["signature"]["output_specs"] = [{"user_output": {"arg": {"as_tensor": {"name": previous}}}}]
    return rezip(src, dst, replace={"models/model.json": json.dumps(doc).encode()})


def test_a_20000_op_graph_imports_in_seconds(seeds, tmp_path):
    path = long_chain(seeds[".pt2"], tmp_path / "chain.pt2", 20_000)
    started = time.monotonic()
    graph = load_model(str(path))
    assert time.monotonic() - started < 60  # generous for a loaded 2-core CI machine
    assert sum(1 for _, a in graph.ops() if a["kind"] == "act") == 20_000


@pytest.fixture(scope="module")
def long_graph(tmp_path_factory):
    """A graph .json of 300,000 chained nodes: validating and rebuilding it takes seconds."""
    nodes = [{"name": f"n{i}", "kind": "identity" if i else "input"} for i in range(300_000)]
    edges = [[f"n{i}", f"n{i + 1}", 0] for i in range(299_999)]
    path = tmp_path_factory.mktemp("long") / "long.json"
    path.write_text(json.dumps({"format": "morphscope.channel_graph", "version": 1, "name": "long",
                                "framework": "torch", "input_shape": [3, 8, 8], "nodes": nodes, "edges": edges}))
    return path


def test_cpu_limit_stops_a_long_parse_with_one_line(long_graph):
    with pytest.raises(UnsupportedFileError, match="long.json: needs more than 1 s of CPU time to parse; limit 1 s"):
        load_model(str(long_graph), limits=Limits(max_cpu_s=1))


def test_wall_clock_limit_stops_a_long_parse_with_one_line(long_graph):
    with pytest.raises(UnsupportedFileError, match="long.json: parsing did not finish in 0.5 s; limit 0.5 s"):
        load_model(str(long_graph), limits=Limits(max_wall_s=0.5))


def test_memory_limit_stops_a_parse_with_one_line(tmp_path, torch_graph):
    import torch

    path = tmp_path / "big.pt"
    torch.save({"bn_dw.weight": torch.ones(16 * 2**20 // 4)}, path)  # a 16 MB tensor
    with pytest.raises(UnsupportedFileError, match="big.pt: needs more than 8 MB to parse; limit 8 MB"):
        load_structure(torch_graph, path, limits=Limits(max_memory_bytes=8 * 2**20))


def test_pickle_payloads_never_run(seeds, tmp_path, torch_graph):
    import torch

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil_pt = tmp_path / "evil.pt"
    torch.save({"bn_dw.weight": torch.ones(13), "x": Payload()}, evil_pt)
    with pytest.raises(UnsafeFileError, match=r"evil.pt: refused, the pickle would run code \(it imports posix.system\)"):
        load_structure(torch_graph, evil_pt)
    # A .pt2 carrying a pickle member: the graph is read from its JSON, the pickle never opened.
    import pickle

    evil_pt2 = rezip(seeds[".pt2"], tmp_path / "evil.pt2", extra={"evil/data/evil.pkl": pickle.dumps(Payload())})
    assert len(load_model(str(evil_pt2))) == len(torch_graph)
    assert not marker.exists()


def test_random_bytes_named_pt_are_not_called_a_pickle(tmp_path, torch_graph):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UnsupportedFileError, match="noise.pt: not a readable PyTorch file") as err:
        load_structure(torch_graph, path)
    assert "holds more than tensors" not in one_line(err)
    # one whole sentence of ours, never torch's advice to load with weights_only=False
    assert one_line(err).endswith("neither a torch.save archive nor a pickle of tensors and plain "
                                  "containers (UnpicklingError)")
    assert "weights_only" not in one_line(err)


def test_nan_gammas_are_refused_naming_the_layer(tmp_path, torch_graph):
    import torch

    state = {k: torch.ones(s) for k, s in [("bn_stem.weight", 13), ("bn_dw.weight", 13), ("bn_pw.weight", 23)]}
    state["bn_dw.weight"][3] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointMismatchError, match=r"nan.pt: does not fit .*: NaN or infinite bn scales "
                       r"in 1 layers \(e.g. bn_dw \(1 of 13\)\)"):
        load_structure(torch_graph, tmp_path / "nan.pt")


def test_messages_name_an_upload_by_its_own_name(tmp_path, torch_graph):
    server_side = tmp_path / "morphscope_upload_x1y2" / "upload.pt2"
    server_side.parent.mkdir()
    server_side.write_bytes(b"not a zip")
    with pytest.raises(UnsupportedFileError) as err:
        load_model(str(server_side), name="my model.pt2")
    assert one_line(err).startswith("my model.pt2: not a torch.export archive")
    assert str(tmp_path) not in str(err.value)
    checkpoint = server_side.with_name("c.safetensors")
    checkpoint.write_bytes(b"\xff" * 64)
    with pytest.raises(UnsupportedFileError, match="^gammas.safetensors: not a readable safetensors") as err:
        load_structure(torch_graph, checkpoint, name="gammas.safetensors")
    assert str(tmp_path) not in str(err.value)


@pytest.mark.parametrize("member", ["../../outside.txt", "/etc/evil", "C:/evil"])
def test_zip_members_named_outside_the_archive_are_refused(seeds, tmp_path, torch_graph, member):
    path = rezip(seeds[".keras"], tmp_path / "escape.keras", extra={member: b"x"})
    with pytest.raises(UnsafeFileError, match=f"escape.keras: refused, zip member '{member}' points outside"):
        load_structure(torch_graph, path)
    with pytest.raises(UnsafeFileError, match="points outside the archive"):
        load_model(str(rezip(seeds[".pt2"], tmp_path / "escape.pt2", extra={member: b"x"})))


def test_limits_must_be_finite_and_positive():
    with pytest.raises(UnsupportedFileError, match=r"limit max_cpu_s=0: expected a finite positive number"):
        Limits(max_cpu_s=0)
    with pytest.raises(UnsupportedFileError, match=r"limit max_memory_bytes=nan"):
        Limits(max_memory_bytes=float("nan"))


def test_limits_above_their_ceilings_are_refused():
    # 2**40 bytes (1 TiB) and 86,400 s (a day) are the ceilings; 1e300 overflowed setrlimit and select.
    with pytest.raises(UnsupportedFileError, match=r"limit max_wall_s=1e\+300: expected a finite "
                                                   r"positive number up to 86,400"):
        Limits(max_wall_s=1e300)
    with pytest.raises(UnsupportedFileError, match=r"limit max_memory_bytes=1099511627777: .* up to "
                                                   r"1,099,511,627,776"):
        Limits(max_memory_bytes=2**40 + 1)
    assert Limits(max_memory_bytes=2**40, max_cpu_s=86_400, max_wall_s=86_400).max_cpu_s == 86_400
