"""Gamma checkpoints in every format, matched to the graph; mismatches reported, not crashed."""

import json

import numpy as np
import pytest

import handbuilt
from handbuilt import H, W, alive_at
from morphscope.importers.checkpoints import load_structure, match_alive_counts, read_checkpoint
from morphscope.importers.keras_importer import load_keras_model
from morphscope.importers.torch_importer import load_module
from morphscope.errors import CheckpointMismatchError, UnsupportedFileError

GAMMAS = {"bn_stem": alive_at(13, range(6)), "bn_dw": alive_at(13, range(4, 10)),
          "bn_pw": alive_at(23, range(17))}


@pytest.fixture(scope="module")
def torch_net():
    module = handbuilt.torch_separable_net()
    return module, load_module(module, (3, H, W))


@pytest.fixture(scope="module")
def keras_net():
    module = handbuilt.keras_separable_net()
    for bn, gamma in GAMMAS.items():
        module.get_layer(bn).gamma.assign(gamma)
    return module, load_keras_model(module)


def assert_gammas(structure):
    assert set(structure.gammas) == set(GAMMAS)
    for bn, gamma in GAMMAS.items():
        np.testing.assert_array_equal(structure.gammas[bn], gamma)


def test_torch_state_dict(torch_net, tmp_path):
    module, graph = torch_net
    assert_gammas(load_structure(graph, handbuilt.torch_checkpoint(module, GAMMAS, tmp_path / "c.pth")))


def test_safetensors(torch_net, tmp_path):
    import torch
    from safetensors.torch import save_file

    module, graph = torch_net
    state = {k: v.contiguous() for k, v in module.state_dict().items() if v.is_floating_point()}
    for bn, gamma in GAMMAS.items():
        state[f"{bn}.weight"] = torch.as_tensor(gamma)
    save_file(state, tmp_path / "c.safetensors")
    assert_gammas(load_structure(graph, tmp_path / "c.safetensors"))


@pytest.mark.parametrize("name", ["c.keras", "c.weights.h5", "c.h5"])
def test_keras_files(keras_net, tmp_path, name):
    module, graph = keras_net
    path = tmp_path / name
    module.save_weights(path) if name.endswith(".weights.h5") else module.save(path)
    assert_gammas(load_structure(graph, path))


def test_missing_extra_and_wrong_shapes_are_reported(torch_net, tmp_path):
    import torch

    module, graph = torch_net
    state = module.state_dict()
    del state["bn_dw.weight"]
    state["bn_pw.weight"] = torch.ones(22)
    state["ghost.conv.weight"] = torch.ones(3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_structure(graph, tmp_path / "bad.pt")
    message = str(err.value)
    assert "bad.pt: does not fit" in message
    assert "1 of 3 bn scales missing (e.g. bn_dw.weight)" in message
    assert "bn_pw.weight has 22 values, the model has 23" in message
    assert "layers the model does not have (e.g. ghost.conv)" in message


def test_model_without_bn_scales_says_so(tmp_path):
    from morphscope.importers.keras_importer import build_keras_application

    graph = load_keras_model(build_keras_application("InceptionV3"))  # bn built with scale=False
    path = tmp_path / "empty.json"
    with pytest.raises(CheckpointMismatchError, match="no bn scales .gammas.: nothing to regularize or prune"):
        from morphscope.importers.checkpoints import match_gammas

        match_gammas(graph, {"x": np.ones(3)}, str(path))


def test_alive_counts_over_the_layer_width_are_refused(torch_net):
    _, graph = torch_net
    with pytest.raises(CheckpointMismatchError, match="pw/Conv2D has 40 alive channels, the model's pw has only 23"):
        match_alive_counts(graph, {"pw/Conv2D": 40}, "alive_7")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello")
    with pytest.raises(UnsupportedFileError, match="notes.safetensors: not a readable safetensors file"):
        read_checkpoint(path)
    bad_json = tmp_path / "alive_100"
    bad_json.write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(UnsupportedFileError, match="expected a JSON object from op name to alive count"):
        load_structure(None, bad_json)


@pytest.mark.parametrize("wrap", [
    lambda k: f"module.{k}",  # DistributedDataParallel / DataParallel
    lambda k: f"_orig_mod.{k}",  # torch.compile
    lambda k: f"module._orig_mod.{k}",  # compiled, then DDP
    lambda k: f"_fsdp_wrapped_module.{k.replace('.', '._fsdp_wrapped_module.', 1)}",  # FSDP, nested units
    lambda k: f"_checkpoint_wrapped_module.{k}",  # activation checkpointing
])
def test_state_dicts_of_wrapped_models_match(torch_net, tmp_path, wrap):
    import torch

    module, graph = torch_net
    path = handbuilt.torch_checkpoint(module, GAMMAS, tmp_path / "plain.pt")
    state = {wrap(k): v for k, v in torch.load(path, weights_only=True).items()}
    torch.save(state, tmp_path / "wrapped.pt")
    assert_gammas(load_structure(graph, tmp_path / "wrapped.pt"))


def test_state_dict_of_a_compiled_model_matches(torch_net, tmp_path):
    import torch

    module, graph = torch_net
    handbuilt.torch_checkpoint(module, GAMMAS, tmp_path / "plain.pt")
    module.load_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True))
    compiled = torch.compile(module)  # its state_dict keys start with _orig_mod.
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    torch.save(compiled.state_dict(), tmp_path / "compiled.pt")
    assert_gammas(load_structure(graph, tmp_path / "compiled.pt"))


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam", "rmsprop"])
def test_keras_files_saved_after_fit_skip_the_optimizer_state(keras_net, tmp_path, optimizer):
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    module, graph = keras_net
    clone = keras.models.clone_model(module)
    clone.set_weights(module.get_weights())
    chosen = keras.optimizers.SGD(momentum=0.9) if optimizer == "sgd_momentum" else optimizer
    clone.compile(optimizer=chosen, loss="mse")
    clone.fit(np.zeros((2, H, W, 3)), np.zeros((2, 5)), epochs=1, verbose=0)
    for layer, gamma in GAMMAS.items():  # fit moved the gammas: put the expected ones back
        clone.get_layer(layer).gamma.assign(gamma)
    for name in ("fit.weights.h5", "fit.keras", "fit.h5"):
        path = tmp_path / name
        clone.save_weights(path) if name.endswith(".weights.h5") else clone.save(path)
        assert_gammas(load_structure(graph, path))


def test_in_process_and_isolated_reads_agree(torch_net, tmp_path):
    module, graph = torch_net
    path = handbuilt.torch_checkpoint(module, GAMMAS, tmp_path / "c.pt")
    isolated, local = load_structure(graph, path), load_structure(graph, path, isolate=False)
    for bn in GAMMAS:
        np.testing.assert_array_equal(isolated.gammas[bn], local.gammas[bn])


def test_unknown_checkpoint_type_is_refused(torch_net, tmp_path):
    path = tmp_path / "gammas.npz"
    path.write_bytes(b"PK")
    with pytest.raises(UnsupportedFileError, match=r"gammas.npz: unknown checkpoint type; choose from .pt, "):
        load_structure(torch_net[1], path)


def test_plain_state_dicts_are_read_without_torch_exactly_as_torch_load_reads_them(tmp_path):
    import torch

    from morphscope.importers.checkpoints import _torch_tensors
    from morphscope.importers.load import read_torch_pickle
    from morphscope.importers.torch_zip import read_torch_zip

    state = {"w": torch.randn(4, 3), "f32": torch.randn(13), "bf16": torch.randn(7).bfloat16(),
             "f16": torch.randn(5).half(), "f64": torch.randn(3).double(), "slice": torch.randn(10)[2:6],
             "p": torch.nn.Parameter(torch.randn(2)), "steps": torch.tensor(9)}
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": state, "epoch": 3, "note": "x"}, path)
    assert read_torch_zip(path, "plain.pt") is not None  # the fast path takes it
    fast = read_checkpoint(path, full=True)
    reference = _torch_tensors("plain.pt", read_torch_pickle(path), full=True)
    assert fast.shapes == reference.shapes == {k: tuple(v.shape) for k, v in state.items() if k != "steps"}
    for key, values in reference.arrays.items():
        np.testing.assert_array_equal(fast.arrays[key], values)


def test_state_dicts_needing_more_than_tensors_go_to_torch_load(tmp_path):
    import torch

    from morphscope.importers.torch_zip import read_torch_zip

    torch.save({"w": torch.ones(3), "size": torch.Size([1, 2])}, tmp_path / "size.pt")  # torch.Size global
    assert read_torch_zip(tmp_path / "size.pt", "size.pt") is None
    assert read_checkpoint(tmp_path / "size.pt").shapes == {"w": (3,)}
    strided = torch.randn(4, 6)[:, ::2]  # a non-contiguous view: torch.load rebuilds it
    torch.save({"v": strided.t()[0]}, tmp_path / "strided.pt")
    np.testing.assert_array_equal(read_checkpoint(tmp_path / "strided.pt").arrays["v"], strided.t()[0].numpy())


@pytest.mark.parametrize("damage, message", [
    (lambda items, storage: items.pop(storage), "the pickle names a storage .*data/0 the archive lacks"),
    (lambda items, storage: items.__setitem__(storage, items[storage][:8]), "storage .*data/0 is shorter than its tensors"),
    (lambda items, storage: items.__setitem__(next(k for k in items if k.endswith("data.pkl")),
                                              items[next(k for k in items if k.endswith("data.pkl"))][:40]),
     r"not a readable PyTorch file \(corrupt pickle"),
])
def test_damaged_plain_state_dicts_get_one_line(tmp_path, damage, message):
    import zipfile

    import torch

    torch.save({"w": torch.ones(13)}, tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as archive:
        items = {i.filename: archive.read(i) for i in archive.infolist()}
    damage(items, next(k for k in items if k.endswith("data/0")))
    with zipfile.ZipFile(tmp_path / "bad.pt", "w") as archive:  # stored, as torch writes
        for name, data in items.items():
            archive.writestr(name, data)
    with pytest.raises(UnsupportedFileError, match=f"bad.pt: {message}"):
        read_checkpoint(tmp_path / "bad.pt")


def test_a_hundred_thousand_key_state_dict_is_read_and_matched_isolated(tmp_path):
    # A chain x -> b0 -> b1 -> ... of 25,000 bn ops of 4 channels; the state_dict holds their
    # weight, bias, running_mean and running_var: 100,000 keys, one storage each.
    import time

    import torch

    from morphscope.analyzers.synthetic import bn_chain, bn_chain_keys

    n_bn = 25_000
    graph = bn_chain(n_bn)
    values = torch.arange(4 * n_bn, dtype=torch.float32).reshape(n_bn, 4)  # gamma of b_i: 4i .. 4i+3
    state = {key: values[i // 4].clone() if key.endswith(".weight") else torch.full((4,), -1.0)
             for i, key in enumerate(bn_chain_keys(n_bn))}
    torch.save(state, tmp_path / "big.pt")
    start = time.perf_counter()
    structure = load_structure(graph, tmp_path / "big.pt")
    elapsed = time.perf_counter() - start
    assert len(structure.gammas) == n_bn
    for i in (0, 1, 12_345, n_bn - 1):
        np.testing.assert_array_equal(structure.gammas[f"b{i}"], [4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3])
    assert elapsed < 30  # a few seconds on a quiet 2-core machine; generous for a loaded CI


def _bn_state(n, prefix="", dtype=None):
    import torch

    state = {}
    for i in range(n):
        for p in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}b{i}.{p}"] = torch.randn(4 + i % 3, dtype=dtype or torch.float32)
    return state


def _odd_state():
    # Mixed storage kinds (the first of each defines its global mid-file), scalars, 4-d and
    # 5-d kernels (MARK tuples), a view sharing a storage, a strided-free slice with an
    # offset, big dims (BININT2/BININT), keys with "((" and non-ASCII text, > 1000 items.
    import torch

    state = _bn_state(300)
    base = torch.randn(40)
    state.update({"conv.weight": torch.randn(8, 3, 3, 3), "conv3d.weight": torch.randn(2, 2, 1, 3, 3),
                  "count": torch.tensor(7), "half": torch.randn(5).half(), "bf": torch.randn(6).bfloat16(),
                  "slice": base[10:20], "whole": base, "wide": torch.zeros(70000), "((odd)).weight": torch.ones(3),
                  "schön.bias": torch.ones(2), "mask": torch.ones(4, dtype=torch.bool)})
    state.update(_bn_state(50, prefix="late."))
    return state


def _both_ways(path, monkeypatch):
    """read_checkpoint with the record scanner and with the unpickler alone."""
    from morphscope.importers import torch_zip

    fast = read_checkpoint(path, full=True)
    with monkeypatch.context() as patch:
        patch.setattr(torch_zip, "_spliced_load", lambda *args: None)
        slow = read_checkpoint(path, full=True)
    assert list(fast.shapes.items()) == list(slow.shapes.items())
    assert list(fast.arrays) == list(slow.arrays)
    for key, values in slow.arrays.items():
        np.testing.assert_array_equal(fast.arrays[key], values)
    return fast


@pytest.mark.parametrize("kind", ["plain", "ddp", "nested", "module", "odd"])
def test_scanned_records_read_exactly_as_the_unpickler_reads_them(tmp_path, monkeypatch, kind):
    import collections

    import torch

    from morphscope.importers.torch_zip import read_torch_zip

    if kind == "module":  # an OrderedDict with _metadata (a BUILD after the items)
        layers = [torch.nn.BatchNorm2d(4 + i % 3) for i in range(100)]
        state = torch.nn.Sequential(*layers).state_dict()
    else:
        state = {"plain": _bn_state(100), "ddp": _bn_state(100, "module."), "odd": _odd_state()}.get(kind)
        if kind == "nested":
            state = {"epoch": 3, "state_dict": collections.OrderedDict(_bn_state(100)), "note": "x"}
    path = tmp_path / f"{kind}.pt"
    torch.save(state, path)
    obj, reader = read_torch_zip(path, path.name)
    assert reader.runs, "the scanner takes torch.save's records"
    reader.close()
    fast = _both_ways(path, monkeypatch)
    plain = state["state_dict"] if kind == "nested" else state
    floating = {k.removeprefix("module."): v for k, v in plain.items() if v.is_floating_point()}
    assert list(fast.shapes) == list(floating)
    for key, value in floating.items():
        np.testing.assert_array_equal(fast.arrays[key], value.float().numpy())


def test_scanner_leaves_irregular_records_to_the_unpickler(tmp_path, monkeypatch):
    import torch

    from morphscope.importers.torch_zip import read_torch_zip

    state = _bn_state(100)
    state["b5.weight"] = torch.nn.Parameter(torch.randn(4))  # _rebuild_parameter: not the pattern
    tied = torch.randn(4)
    state["b7.weight"], state["b70.weight"] = tied, tied  # a storage fetched from the memo
    state["b9.bias"] = torch.randn(6, 4)[:, 1]  # strided: torch.load rebuilds it
    path = tmp_path / "irregular.pt"
    torch.save(state, path)
    _both_ways(path, monkeypatch)
    state.pop("b9.bias")
    torch.save(state, path)
    assert read_torch_zip(path, path.name) is not None
    fast = _both_ways(path, monkeypatch)
    np.testing.assert_array_equal(fast.arrays["b70.weight"], tied.numpy())


@pytest.mark.parametrize("damage", ["rebuild", "storage", "truncate"])
def test_damaged_scanned_records_fall_back_to_the_unpickler(tmp_path, damage):
    import zipfile

    import torch

    torch.save(_bn_state(100), tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as archive:
        items = {i.filename: archive.read(i) for i in archive.infolist()}
    pkl = next(k for k in items if k.endswith("data.pkl"))
    data = items[pkl]
    if damage == "rebuild":  # a later record fetches memo 4 (FloatStorage) as its rebuild function
        at = data.rindex(b"h\x02((")
        data = data[:at] + b"h\x04" + data[at + 2:]
    elif damage == "storage":  # a record names a storage kind that is not one
        at = data.rindex(b"((h\x03h\x04")
        data = data[:at + 4] + b"h\x02" + data[at + 6:]
    else:
        data = data[:len(data) // 2]
    items[pkl] = data
    with zipfile.ZipFile(tmp_path / "bad.pt", "w") as archive:
        for member, content in items.items():
            archive.writestr(member, content)
    from morphscope.importers.torch_zip import _spliced_load

    assert _spliced_load(data, "bad.pt", None) is None
    with pytest.raises(UnsupportedFileError, match="bad.pt: "):
        read_checkpoint(tmp_path / "bad.pt")


def test_keys_that_unwrap_to_one_keep_the_last_tensor_in_the_first_place(tmp_path):
    import torch

    # module.b.weight and b.weight are both b.weight unwrapped: as in a dict, the later
    # value (5 twos) in the earlier place.
    torch.save({"module.b.weight": torch.ones(3), "a.bias": torch.zeros(2), "b.weight": torch.full((5,), 2.0)},
               tmp_path / "twice.pt")
    fast = read_checkpoint(tmp_path / "twice.pt")
    assert list(fast.shapes.items()) == [("b.weight", (5,)), ("a.bias", (2,))]
    np.testing.assert_array_equal(fast.arrays["b.weight"], [2.0] * 5)


def test_keys_come_back_from_the_parsing_child_as_they_were(tmp_path):
    from morphscope.importers.isolation import _load_keys, _save_keys

    keys = ["b0.weight", "", "a\nb", "schön", "\ud800lone", "x" * 300]  # a lone surrogate: pickles may hold one
    _save_keys(tmp_path, "some", keys)
    _save_keys(tmp_path, "none", [])
    assert _load_keys(tmp_path, "some") == keys
    assert _load_keys(tmp_path, "none") == []
