"""tf_keras 2.x model files (what morph-net's users have) load with exact counts.

The test writes the files itself, with the keys tf_keras 2.x writes and Keras 3 rejects:
``dtype`` inside initializer configs and ``groups`` in DepthwiseConv2D configs. The .h5 file
is laid out as tf_keras 2.15 writes it (``keras_version`` 2.15.0, ``batch_input_shape``,
nested inbound nodes, ``model_weights/<layer>/<layer>/<var>:0``), so no tf_keras install is
needed.

    input (17x19x3) -> conv1 7x5 (13, bias) -> dw 3x3 (no bias) -> bn -> gap -> fc (5)
"""

import json
import zipfile

import numpy as np
import pytest

from morphscope.analyzers.cost import compile_costs, seed_costs, totals_of
from morphscope.errors import UnsupportedFileError
from morphscope.importers.keras_importer import load_keras_file
from morphscope.importers.keras_legacy import normalize_config, normalized_keras_file

H, W = 17, 19
# params: conv1 kernel + bias, depthwise kernel, bn gamma/beta/mean/var, fc kernel + bias
PARAMS = (7 * 5 * 3 * 13 + 13) + 3 * 3 * 13 + 4 * 13 + (13 * 5 + 5)
# MACs: conv1 kh*kw*H*W*in*out, depthwise kh*kw*H*W*c, fc in*out
MACS = 7 * 5 * H * W * 3 * 13 + 3 * 3 * H * W * 13 + 13 * 5


def _init(cls, **cfg):
    return {"class_name": cls, "config": {**cfg, "dtype": "float32"}}  # tf_keras 2.x adds dtype


def _layer(cls, name, inbound, **cfg):
    return {"class_name": cls, "config": {"name": name, "trainable": True, "dtype": "float32", **cfg},
            "name": name, "inbound_nodes": [[[inbound, 0, 0, {}]]]}


CONV = dict(strides=[1, 1], padding="same", data_format="channels_last", dilation_rate=[1, 1],
            activation="linear", activity_regularizer=None, bias_regularizer=None,
            bias_constraint=None, bias_initializer=_init("Zeros"))
LEGACY_CONFIG = {"class_name": "Functional", "config": {"name": "model", "layers": [
    {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [],
     "config": {"batch_input_shape": [None, H, W, 3], "dtype": "float32", "sparse": False,
                "ragged": False, "name": "input_1"}},
    _layer("Conv2D", "conv1", "input_1", filters=13, kernel_size=[7, 5], groups=1, use_bias=True,
           kernel_initializer=_init("GlorotUniform", seed=None), kernel_regularizer=None,
           kernel_constraint=None, **CONV),
    _layer("DepthwiseConv2D", "dw", "conv1", kernel_size=[3, 3], groups=1, depth_multiplier=1,
           use_bias=False, depthwise_initializer=_init("GlorotUniform", seed=None),
           depthwise_regularizer=None, depthwise_constraint=None, **CONV),
    _layer("BatchNormalization", "bn", "dw", axis=[3], momentum=0.99, epsilon=0.001, center=True,
           scale=True, beta_initializer=_init("Zeros"), gamma_initializer=_init("Ones"),
           moving_mean_initializer=_init("Zeros"), moving_variance_initializer=_init("Ones"),
           beta_regularizer=None, gamma_regularizer=None, beta_constraint=None, gamma_constraint=None),
    _layer("GlobalAveragePooling2D", "gap", "bn", data_format="channels_last", keepdims=False),
    _layer("Dense", "fc", "gap", units=5, activation="linear", use_bias=True,
           kernel_initializer=_init("GlorotUniform", seed=None), bias_initializer=_init("Zeros"),
           kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
           kernel_constraint=None, bias_constraint=None),
], "input_layers": [["input_1", 0, 0]], "output_layers": [["fc", 0, 0]]}}
WEIGHT_SHAPES = {"input_1": {}, "conv1": {"kernel": (7, 5, 3, 13), "bias": (13,)},
                 "dw": {"depthwise_kernel": (3, 3, 13, 1)},
                 "bn": {"gamma": (13,), "beta": (13,), "moving_mean": (13,), "moving_variance": (13,)},
                 "gap": {}, "fc": {"kernel": (13, 5), "bias": (5,)}}


def write_tf_keras_h5(path):
    """An .h5 model file as tf_keras 2.15 writes it."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(LEGACY_CONFIG)
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = [n.encode() for n in WEIGHT_SHAPES]
        weights.attrs["backend"] = b"tensorflow"
        weights.attrs["keras_version"] = b"2.15.0"
        for layer, shapes in WEIGHT_SHAPES.items():
            group = weights.create_group(layer)
            group.attrs["weight_names"] = [f"{layer}/{w}:0".encode() for w in shapes]
            for var, shape in shapes.items():
                group.create_dataset(f"{layer}/{var}:0", data=rng.normal(size=shape).astype("float32"))


def assert_exact_counts(graph):
    model = compile_costs(graph)
    totals = totals_of(model, seed_costs(model))
    assert totals["params"] == PARAMS
    assert totals["macs"] == MACS


def test_keras3_refuses_the_raw_tf_keras_h5(tmp_path):
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    path = tmp_path / "legacy.h5"
    write_tf_keras_h5(path)
    with pytest.raises(TypeError, match="GlorotUniform"):  # what the normalization is for
        keras.saving.load_model(path, compile=False, safe_mode=True)


def test_tf_keras_h5_loads_with_exact_params_and_macs(tmp_path):
    path = tmp_path / "legacy.h5"
    write_tf_keras_h5(path)
    graph = load_keras_file(path)
    assert_exact_counts(graph)
    assert graph["dw"]["groups"] == 13 and graph["bn"].get("gamma_key")


def test_keras_zip_with_tf_keras_config_keys_loads(tmp_path):
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    clean = tmp_path / "clean.h5"
    write_tf_keras_h5(clean)
    with normalized_keras_file(clean) as (source, _):
        model = keras.saving.load_model(source, compile=False, safe_mode=True)
    plain = tmp_path / "plain.keras"
    model.save(plain)
    legacy = tmp_path / "legacy.keras"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(legacy, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":  # put back the keys tf_keras 2.x writes
                config = json.loads(data)
                for layer in config["config"]["layers"]:
                    if layer["class_name"] == "DepthwiseConv2D":
                        layer["config"]["groups"] = 1
                    for key, value in layer["config"].items():
                        if key.endswith("_initializer"):
                            value["config"]["dtype"] = "float32"
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(Exception, match="groups|dtype|deserializ"):
        keras.saving.load_model(legacy, compile=False, safe_mode=True)
    assert_exact_counts(load_keras_file(legacy))


def test_normalize_reports_each_change_and_refuses_real_groups():
    _, changes = normalize_config(LEGACY_CONFIG)
    assert "dw: groups=1 dropped (DepthwiseConv2D)" in changes
    assert "conv1: dtype dropped from kernel_initializer" in changes
    bad = {"class_name": "DepthwiseConv2D", "config": {"name": "dw", "groups": 4}}
    with pytest.raises(UnsupportedFileError, match="dw: DepthwiseConv2D with groups=4"):
        normalize_config(bad)


def test_oversized_or_broken_configs_are_refused(tmp_path, monkeypatch):
    import h5py

    from morphscope.importers import keras_legacy

    h5, archive = tmp_path / "big.h5", tmp_path / "big.keras"
    write_tf_keras_h5(h5)
    with zipfile.ZipFile(archive, "w") as dst:
        dst.writestr("config.json", json.dumps(LEGACY_CONFIG))
    monkeypatch.setattr(keras_legacy, "MAX_CONFIG_BYTES", 100)
    with pytest.raises(UnsupportedFileError, match="big.keras: config.json over 100 bytes"):
        with normalized_keras_file(archive):
            pass
    monkeypatch.undo()
    with h5py.File(h5, "r+") as f:
        f.attrs["model_config"] = "{not json"
    with pytest.raises(UnsupportedFileError, match="big.h5: the model config is not JSON"):
        with normalized_keras_file(h5):
            pass
