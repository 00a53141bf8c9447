"""Your own functional keras.Model in, a smaller keras.Model out (`morphscope.rebuild`).

    x(17x19x3) -> stem Conv 3x3 (24) BN relu -+-> res_a Conv (20) BN relu -> res_b Conv (24) BN -+-> Add relu
                                              +------------------------------------------------+
         -> tower_a Conv 1x1 (16) BN relu --+
         -> tower_b Conv 3x3 (12) BN relu --+-> Concatenate (28) -> DepthwiseConv 3x3 BN relu
         -> pw Conv 1x1 (32) BN relu -> SE (pool, Dense 8 relu, Dense 32 sigmoid, Multiply)
         -> grouped Conv 3x3 (36, groups 4) BN relu -> pool -> Dense (10)

Dead channels are set as a regularized run leaves them: scale and shift zero in every bn of
their tied group, so the seed's own output is the output with them zeroed.
"""

from __future__ import annotations

import numpy as np
import pytest

import morphscope
from morphscope.importers.keras_importer import import_keras

keras = import_keras()
layers = keras.layers
H, W = 17, 19

DEAD = {
    "stem_bn": [1, 5, 6, 17, 23], "res_b_bn": [1, 5, 6, 17, 23],  # tied by the add: 24 -> 19
    "res_a_bn": [0, 2, 4, 19],                                     # 20 -> 16
    "tower_a_bn": [3, 9], "tower_b_bn": [0, 11],                   # 16 -> 14, 12 -> 10
    "dw_bn": [3, 9, 16 + 0, 16 + 11],                              # the concat, as the towers
    "pw_bn": [2, 11, 17, 30],                                      # 32 -> 28, 7 per group of 8
    "grouped_bn": [0, 9, 18, 27],                                  # 36 -> 32, 8 per group of 9
}


def _cbr(x, filters, k, name, groups=1):
    x = layers.Conv2D(filters, k, padding="same", use_bias=False, groups=groups, name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def own_keras_net():
    inputs = keras.Input((H, W, 3), name="image")
    x = _cbr(inputs, 24, 3, "stem")
    r = _cbr(x, 20, 3, "res_a")
    r = layers.Conv2D(24, 3, padding="same", use_bias=False, name="res_b")(r)
    r = layers.BatchNormalization(name="res_b_bn")(r)
    x = layers.ReLU(name="res_relu")(layers.Add(name="res_add")([x, r]))
    x = layers.Concatenate(name="towers")([_cbr(x, 16, 1, "tower_a"), _cbr(x, 12, 3, "tower_b")])
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = layers.ReLU(name="dw_relu")(layers.BatchNormalization(name="dw_bn")(x))
    x = _cbr(x, 32, 1, "pw")
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="se_pool")(x)
    gate = layers.Dense(8, activation="relu", name="se_reduce")(gate)
    gate = layers.Dense(32, activation="sigmoid", name="se_expand")(gate)
    x = layers.Multiply(name="se_gate")([x, gate])
    x = _cbr(x, 36, 3, "grouped", groups=4)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(10, name="head")(x), name="own_keras_net")


@pytest.fixture(scope="module")
def trained():
    from morphscope.regularizers.keras_regularizer import KerasFlopsRegularizer

    keras.utils.set_random_seed(0)
    model = own_keras_net()
    reg = KerasFlopsRegularizer(model)
    reg.attach(model, 1e-8)
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(4, H, W, 3)).astype("float32")
    model.fit(x, np.arange(4), epochs=3, batch_size=4, verbose=0)  # a few regularized steps
    for name, channels in DEAD.items():
        gamma, beta, mean, var = model.get_layer(name).get_weights()
        gamma[channels], beta[channels] = 0.0, 0.0
        model.get_layer(name).set_weights([gamma, beta, mean, var])
    return model, reg, x


def test_keras_rebuild_counts_what_was_predicted_and_trains(trained):
    model, reg, x = trained
    small = morphscope.rebuild(model, reg)
    predicted = morphscope.export(model, reg)["predicted_params"]
    assert small.count_params() == predicted < model.count_params()
    # Keras kernels are (kh, kw, in / groups, out): the learned widths, written out
    assert small.get_layer("stem").kernel.shape == (3, 3, 3, 24 - 5)
    assert small.get_layer("grouped").kernel.shape == (3, 3, (32 - 4) // 4, 36 - 4)
    assert small.get_layer("se_expand").kernel.shape == (8, 32 - 4)
    small.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = small.fit(x, np.arange(4), epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_keras_rebuild_with_copied_weights_gives_the_seeds_outputs(trained):
    model, reg, x = trained
    small = morphscope.rebuild(model, reg, copy_weights=True)
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)


def test_keras_round_to_8(trained):
    model, reg, _ = trained
    small = morphscope.rebuild(model, reg, round_to=8)
    assert small.count_params() == morphscope.export(model, reg, round_to=8)["predicted_params"]
    # 19 -> 24; 16 stays; 14 -> 16; 10 -> 16 is over its seed's 12: 12; 28 -> 32 (lcm(4, 8) = 8)
    assert [small.get_layer(n).kernel.shape[-1] for n in ("stem", "res_a", "tower_a", "tower_b", "pw")] \
        == [24, 16, 16, 12, 32]
