"""Our default (physical) numbers against morph-net's, one documented difference at a time.

Each test builds the same small network in PyTorch and Keras and asserts both conventions'
numbers, written out as arithmetic: the physical count, and morph-net's by its
``resource_function.py`` rules (quoted beside each).
"""

import numpy as np
import pytest

import nets
from morphscope.analyzers.conventions import Scope

FRAMEWORKS = ["torch", "keras"]
H, W = 5, 7
ALIVE = 6  # of the conv's 13 channels


def flatten_net(framework):
    """image 5x7x3 -> conv 3x3 SAME (13) -> bn -> relu -> maxpool 2 (2x3) -> flatten (78) -> fc (11)."""
    gamma = np.r_[np.full(ALIVE, 0.5), np.full(13 - ALIVE, 1e-3)].astype(np.float32)
    if framework == "torch":
        import torch
        from torch import nn

        model = nn.Sequential(nn.Conv2d(3, 13, 3, padding=1, bias=False), nn.BatchNorm2d(13), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(13 * 2 * 3, 11))
        with torch.no_grad():
            model[1].weight.copy_(torch.as_tensor(gamma))
        return model, {"conv": "0", "pool": "3", "fc": "5"}, torch.zeros(1, 3, H, W)
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    layers = keras.layers
    image = keras.Input((H, W, 3))
    x = layers.Conv2D(13, 3, padding="same", use_bias=False, name="conv")(image)
    x = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(x))
    x = layers.Flatten(name="flatten")(layers.MaxPooling2D(2, name="pool")(x))
    model = keras.Model(image, layers.Dense(11, name="fc")(x))
    model.get_layer("bn").gamma.assign(gamma)
    return model, {"conv": "conv", "pool": "pool", "fc": "fc"}, None


def flops_regularizer(framework, model, example, **kwargs):
    if framework == "torch":
        from morphscope.regularizers.torch_regularizer import GammaRegularizer

        return GammaRegularizer(model, example_input=example, **kwargs)
    from morphscope.regularizers.keras_regularizer import KerasGammaRegularizer

    return KerasGammaRegularizer(model, **kwargs)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_flatten_into_dense_and_pooling_bytes(framework):
    model, names, example = flatten_net(framework)
    physical = flops_regularizer(framework, model, example)
    morphnet = flops_regularizer(framework, model, example, convention="morph-net")
    # Physical: each alive channel feeds its 2x3 pixels of the dense layer.
    assert nets.per_op(physical, "macs", [names["fc"]]) == [ALIVE * 2 * 3 * 11]
    # morph-net: the reshape is a leaf (LeafOpHandler), the MatMul reads its static 78 inputs.
    assert nets.per_op(morphnet, "macs", [names["fc"]]) == [13 * 2 * 3 * 11]
    # Both prune the conv the same: 6 alive outputs of 3 inputs, 3x3 at 5x7.
    assert nets.per_op(physical, "macs", [names["conv"]]) == nets.per_op(morphnet, "macs", [names["conv"]]) \
        == [9 * H * W * 3 * ALIVE]
    # Pooling moves memory physically (read 5x7, write 2x3 per alive channel); morph-net's
    # memory_function charges no MaxPool (not in its SUPPORTED_OPS).
    assert nets.per_op(physical, "bytes_moved", [names["pool"]]) == [4 * (H * W + 2 * 3) * ALIVE]
    assert nets.per_op(morphnet, "bytes_moved", [names["pool"]]) == [0.0]


def test_dense_applied_per_pixel_counts_rows_only_physically():
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    image = keras.Input((H, W, 3))
    x = keras.layers.Conv2D(13, 1, name="conv")(image)
    model = keras.Model(image, keras.layers.Dense(11, name="per_pixel")(x))  # a 5x7x11 output
    from morphscope.analyzers.widths import compile_width_model
    from morphscope.importers.keras_importer import load_keras_model

    graph = load_keras_model(model)
    for convention, macs, moved in (
            # physical: every one of the 35 pixels is a row of the product; bias bytes
            ("physical", H * W * 13 * 11, 4 * (H * W * 13 + 13 * 11 + H * W * 11 + 11)),
            # morph-net: flop_coeff of a MatMul is 2 whatever the rows; memory (ai + ai*ao + ao)*4
            ("morph-net", 13 * 11, 4 * (13 + 13 * 11 + 11))):
        width_model = compile_width_model(graph, convention)
        per_op = width_model.per_op(width_model.seed_widths)
        row = width_model.costs.index["per_pixel"]
        assert (per_op["macs"][row], per_op["bytes_moved"][row]) == (macs, moved)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_depthwise_kernel_and_bias_bytes(framework):
    # flop_regularizer_test's depthwise net without bn: dw2 (5x5, with bias) reads conv2's 11 alive.
    model = nets.build(framework, nets.depthwise_net(False), nets.DEPTHWISE_OUTPUTS)
    nets.set_gammas(framework, model, {"conv1": [0.8] * 7 + [0.2] * 6, "conv2": [-0.7] * 11 + [0.1] * 12,
                                       "conv3": [0.6] * 10 + [-0.3] * 19})
    physical = nets.regularizer(framework, model, threshold=0.45)
    morphnet = nets.regularizer(framework, model, threshold=0.45, convention="morph-net")
    a = 11
    # Physical: input map, output map, a 5x5 kernel per channel and its bias.
    assert nets.per_op(physical, "bytes_moved", ["dw2"]) == [4 * (17 * 19 * a + 17 * 19 * a + 5 * 5 * a + a)]
    # morph-net: the weight tensor is bilinear, kh*kw*a_in*a_out; BiasAdd is not charged.
    assert nets.per_op(morphnet, "bytes_moved", ["dw2"]) == [4 * (17 * 19 * a + 5 * 5 * a * a + 17 * 19 * a)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_threshold_is_compared_in_float32(framework):
    # float32(0.1) = 0.100000001 > 0.1 in float64, but not > float32(0.1): morph-net's
    # gamma_l1_regularizer compares |gamma| > threshold as float32 tensors; so do we.
    model = nets.build(framework, nets.ONE_CONV_NET, nets.ONE_CONV_OUTPUTS, (3, 3, 3))
    nets.set_gammas(framework, model, {"conv1": [np.float32(0.1), np.float32(0.2)]})
    for convention in ("physical", "morph-net"):
        reg = nets.regularizer(framework, model, (3, 3, 3), threshold=0.1, convention=convention,
                               scope=Scope(prune_outputs="all"))
        assert nets.per_op_flops(reg, ["conv1"]) == [18 * 3 * 1]  # one of two channels alive


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_default_latency_charges_every_op_that_moves_memory(framework):
    # The concat net of latency_regularizer_test under our default convention: bn, relu and
    # concat cost their memory time too, so testLossRegression's total holds unchanged.
    model = nets.build(framework, nets.CONCAT_NET, nets.CONCAT_OUTPUTS)
    nets.set_gammas(framework, model, {"conv1": [0.8] * 7 + [0.2] * 6, "conv2": [-0.7] * 11 + [0.1] * 12,
                                       "conv3": [0.6] * 10 + [-0.3] * 19, "conv4": [-0.5] * 17 + [-0.4] * 14})
    reg = nets.regularizer(framework, model, threshold=0.45, resource="latency", hardware="P100",
                           scope=Scope(prune_outputs="all"))
    relu1 = (17 * 19 * 6.8 + 17 * 19 * 6.8) * 4 / 732  # relu1_loss, as batch_norm1_loss
    names = ["conv1_bn", next(reg.graph.nx.successors("conv1_bn"))]  # conv1's bn and relu
    assert [t * 1e9 for t in nets.per_op_terms(reg, names)] == pytest.approx([relu1, relu1], rel=1e-5)
    assert nets.value(reg.loss()) * 1e9 == pytest.approx(461.26717, rel=1e-5)


def test_cli_convention_switch(tmp_path, capsys):
    import json

    import torch

    from morphscope.cli.main import main

    model, _, example = flatten_net("torch")
    path = tmp_path / "flatten.pt2"
    torch.export.save(torch.export.export(model.eval(), (example,)), path)
    conv_macs = 9 * H * W * 3 * 13
    for convention in ("physical", "morph-net"):
        assert main(["report", str(path), "--convention", convention, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["seed"]["macs"] == conv_macs + 13 * 2 * 3 * 11  # all alive: the same MACs
        assert doc["scope"]["convention"] == convention
    # With the bn's gammas (6 of 13 alive) the dense layer differs: alive x pixels vs static.
    weights = tmp_path / "gammas.pt"
    torch.save(model.state_dict(), weights)
    for convention, fc_in in (("physical", ALIVE * 2 * 3), ("morph-net", 13 * 2 * 3)):
        assert main(["report", str(path), "--checkpoint", str(weights), "--convention", convention, "--json"]) == 0
        [morphed] = json.loads(capsys.readouterr().out)["morphed"]
        assert morphed["macs"] == 9 * H * W * 3 * ALIVE + fc_in * 11
    with pytest.raises(SystemExit) as exit_status:
        main(["report", str(path), "--convention", "tf"])
    assert exit_status.value.code == 2
    assert "invalid choice: 'tf'" in capsys.readouterr().err


def test_public_api_takes_the_convention_and_scope(tmp_path):
    import torch

    import morphscope
    from morphscope.importers.torch_importer import load_module

    model, names, example = flatten_net("torch")
    weights = tmp_path / "gammas.pt"
    torch.save(model.state_dict(), weights)
    graph = load_module(model, (3, H, W), name="flatten")
    physical = morphscope.report(graph, [weights])["morphed"][0]["macs"]
    morphnet = morphscope.report(graph, [weights], convention="morph-net")["morphed"][0]["macs"]
    assert morphnet - physical == (13 - ALIVE) * 2 * 3 * 11  # the dense layer's static inputs
    # The conv outside the analysed part (analysis starts after it): kept at 13.
    scoped = morphscope.export(graph, weights, scope=Scope(inputs=(names["conv"],)))["widths"]
    assert scoped[names["conv"]] == 13
