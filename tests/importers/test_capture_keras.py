"""Keras counting causes from the sweeps (issue 12), each on a small model with the expected
numbers written as arithmetic; params against Keras' own ``count_params()``, and where PyTorch
has the same layer, MACs against FlopCounterMode on it.

Sizes: 29 time steps or tokens, 13 input features, 23 units, 24 model width, 4 heads.
"""

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from morphscope.analyzers.cost import compile_costs, seed_costs, totals_of
from morphscope.errors import GraphError
from morphscope.graph import ChannelGraph, Kind
from morphscope.importers.keras_importer import UncountedMacsWarning, import_keras, load_keras_model

keras = import_keras()
layers = keras.layers


def counted(model):
    graph = load_keras_model(model)
    costs = compile_costs(graph)
    totals = totals_of(costs, seed_costs(costs))
    return graph, totals["params"], totals["macs"]


def torch_macs(module, *inputs):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() // 2


# -- 1. shared layers and nested models: params once, MACs at every call --------------------------

def test_shared_dense_layer_counts_params_once_and_macs_twice():
    x = keras.Input((13,))
    shared = layers.Dense(13)
    model = keras.Model(x, shared(shared(x)))
    graph, params, macs = counted(model)
    assert params == model.count_params() == 13 * 13 + 13
    assert macs == 2 * 13 * 13
    assert graph.detached_params == {}


def test_nested_model_called_twice_counts_params_once():
    inner = keras.Sequential([keras.Input((13,)), layers.Dense(23), layers.Dense(13)], name="inner")
    x = keras.Input((13,))
    model = keras.Model(x, inner(inner(x)))
    graph, params, macs = counted(model)
    assert params == model.count_params() == (13 * 23 + 23) + (23 * 13 + 13)
    assert macs == 2 * (13 * 23 + 23 * 13)
    assert graph.detached_params == {}


# -- 3. raw products and custom layers --------------------------------------------------------------

def test_matmul_between_activations_counts_its_product():
    x = keras.Input((29, 13))
    q, k = layers.Dense(24)(x), layers.Dense(24)(x)
    model = keras.Model(x, keras.ops.matmul(q, keras.ops.transpose(k, (0, 2, 1))))
    graph, params, macs = counted(model)
    # two projections 29 x 13 -> 24, then scores (29 x 24) @ (24 x 29)
    assert macs == 2 * 29 * 13 * 24 + 29 * 24 * 29
    assert params == model.count_params() == 2 * (13 * 24 + 24)


def test_dot_product_attention_op_counts_scores_and_weighted_values():
    x = keras.Input((29, 24))
    q, k, v = (layers.Reshape((29, 4, 6))(layers.Dense(24)(x)) for _ in range(3))
    model = keras.Model(x, keras.ops.dot_product_attention(q, k, v))
    graph, params, macs = counted(model)
    # q, k, v projections 3 x 29*24*24; q k^T and attn v: 2 x 4 heads * 29*29*6
    assert macs == 3 * 29 * 24 * 24 + 2 * 4 * 29 * 29 * 6
    assert params == model.count_params() == 3 * (24 * 24 + 24)


def test_keras_attention_layer_is_walked_to_its_two_matmuls():
    x = keras.Input((29, 24))
    model = keras.Model(x, layers.Attention()([x, x]))
    graph, params, macs = counted(model)
    assert macs == 2 * 29 * 29 * 24  # scores (29 x 24) @ (24 x 29), then (29 x 29) @ (29 x 24)
    assert params == model.count_params() == 0


class Project(layers.Layer):
    """A custom layer multiplying by its own kernel with ``ops.einsum`` (no sublayers)."""

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 4, 6))

    def call(self, x):
        return keras.ops.einsum("btd,dhk->bthk", x, self.kernel)


def test_einsum_with_a_weight_operand_counts_every_index():
    x = keras.Input((29, 13))
    model = keras.Model(x, layers.Dense(7)(layers.Reshape((29, 24))(Project()(x))))
    graph, params, macs = counted(model)
    # einsum: b=1, t=29, d=13, h=4, k=6; then Dense 24 -> 7 on 29 tokens
    assert macs == 29 * 13 * 4 * 6 + 29 * 24 * 7
    assert params == model.count_params() == 13 * 4 * 6 + 24 * 7 + 7
    assert graph.detached_params == {}


class ClassToken(layers.Layer):
    """A learned token put in front of the sequence (ViT's class token)."""

    def build(self, shape):
        self.token = self.add_weight(shape=(1, 1, shape[-1]))

    def call(self, x):
        shape = keras.ops.shape(x)
        return keras.ops.concatenate([keras.ops.broadcast_to(self.token, (shape[0], 1, shape[2])), x],
                                     axis=1)


def test_class_token_is_counted_once_and_lengthens_the_sequence():
    x = keras.Input((29, 24))
    model = keras.Model(x, layers.Dense(7)(ClassToken()(x)))
    graph, params, macs = counted(model)
    assert params == model.count_params() == 24 + (24 * 7 + 7)
    assert macs == (29 + 1) * 24 * 7
    assert graph.detached_params == {}


def four_patches(x):
    """(1, 8, 8, 3) -> (4, 4, 4, 3): the 4 patches of 4 x 4 put into the batch axis."""
    ops = keras.ops
    x = ops.transpose(ops.reshape(x, (-1, 2, 4, 2, 4, 3)), (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, 4, 4, 3))


def test_conv_and_dense_on_patches_folded_into_the_batch_count_every_patch():
    x = keras.Input((8, 8, 3))
    y = layers.Conv2D(8, 3, padding="same")(four_patches(x))
    model = keras.Model(x, layers.Dense(5)(y))
    graph, params, macs = counted(model)
    # 4 patches, each: conv 3x3, 3 -> 8 on 4x4 pixels; dense 8 -> 5 on 4x4 pixels
    assert macs == 4 * (4 * 4 * 3 * 3 * 3 * 8) + 4 * (4 * 4 * 8 * 5)
    assert params == model.count_params() == (3 * 3 * 3 * 8 + 8) + (8 * 5 + 5)


def test_nested_model_on_patches_folded_into_the_batch_counts_every_patch():
    inner = keras.Sequential([keras.Input((4, 4, 3)), layers.Conv2D(8, 3, padding="same")],
                             name="inner")
    x = keras.Input((8, 8, 3))
    model = keras.Model(x, inner(four_patches(x)))
    graph, params, macs = counted(model)
    assert macs == 4 * (4 * 4 * 3 * 3 * 3 * 8)
    assert params == model.count_params() == 3 * 3 * 3 * 8 + 8


class TensorFlowProject(layers.Layer):
    """A custom layer written with TensorFlow ops: Keras builds it on TensorFlow tensors, but
    its call cannot run on symbolic Keras inputs, so its product is not seen."""

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 7))

    def call(self, x):
        import tensorflow as tf

        return tf.matmul(x, self.kernel)


def test_layer_that_cannot_be_traced_is_reported_not_silently_short():
    x = keras.Input((29, 13))
    model = keras.Model(x, TensorFlowProject(name="tf_project")(layers.Dense(13)(x)))
    with pytest.warns(UncountedMacsWarning, match=r"MACs may be short: 1 opaque op .*tf_project "
                                                  r"\(TensorFlowProject: its call\(\) cannot run"):
        graph = load_keras_model(model)
    assert graph["tf_project"]["kind"] == Kind.OPAQUE and "uncounted" in graph["tf_project"]
    assert any("tf_project" in note for note in graph.notes)
    again = ChannelGraph.from_json(graph.to_json())  # the report travels with the graph
    assert again.notes == graph.notes and again["tf_project"]["uncounted"] == graph["tf_project"]["uncounted"]
    costs = compile_costs(graph)
    totals = totals_of(costs, seed_costs(costs))
    assert totals["params"] == model.count_params() == (13 * 13 + 13) + 13 * 7
    assert totals["macs"] == 29 * 13 * 13  # the Dense only: the note says what is missing


# -- 2. composite layers: walked by formula, params counted once ----------------------------------

def test_multi_head_attention_counts_projections_and_attention():
    x = keras.Input((29, 24))
    model = keras.Model(x, layers.MultiHeadAttention(num_heads=4, key_dim=6)(x, x))
    graph, params, macs = counted(model)
    # q, k, v projections 3 x 29*24*(4*6); q k^T and attn v: 2 x 4*29*29*6; output 29*(4*6)*24
    expected = 3 * 29 * 24 * 24 + 2 * 4 * 29 * 29 * 6 + 29 * 24 * 24
    assert macs == expected
    assert params == model.count_params() == 4 * (24 * 24 + 24)
    same = nn.MultiheadAttention(24, 4, batch_first=True)
    tokens = torch.zeros(1, 29, 24)
    assert torch_macs(same, tokens, tokens, tokens) == expected


@pytest.mark.parametrize("cls, gates", [("SimpleRNN", 1), ("GRU", 3), ("LSTM", 4)])
def test_recurrent_layer_counts_gates_times_input_and_state_products(cls, gates):
    x = keras.Input((29, 13))
    model = keras.Model(x, getattr(layers, cls)(23)(x))
    graph, params, macs = counted(model)
    # per step: input (13 x gates*23) and state (23 x gates*23) products
    assert macs == 29 * gates * 23 * (13 + 23)
    assert params == model.count_params()
    if cls == "GRU":  # torch counts GRU on CPU (its fused LSTM kernel it does not)
        assert torch_macs(nn.GRU(13, 23, batch_first=True), torch.zeros(1, 29, 13)) == macs


def test_bidirectional_counts_both_directions():
    x = keras.Input((29, 13))
    model = keras.Model(x, layers.Bidirectional(layers.LSTM(23))(x))
    graph, params, macs = counted(model)
    assert macs == 2 * 29 * 4 * 23 * (13 + 23)
    assert params == model.count_params() == 2 * 4 * (13 * 23 + 23 * 23 + 23)


class CachedAttention(layers.MultiHeadAttention):
    """keras_hub's CachedMultiHeadAttention in small: a call taking ``cache``, which the
    inherited ``compute_output_spec`` does not."""

    def call(self, query, value, key=None, cache=None, training=None):
        return super().call(query, value, key, training=training)


class AttentionBlock(layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = CachedAttention(num_heads=4, key_dim=6, name="attention")

    def build(self, shape):
        self.attention.build(shape, shape)

    def call(self, x):
        return x + self.attention(x, x, cache=None)


def test_subclass_of_attention_in_a_walked_block_gets_the_attention_formula():
    x = keras.Input((29, 24))
    model = keras.Model(x, AttentionBlock(name="block")(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncountedMacsWarning)
        graph, params, macs = counted(model)
    assert macs == 3 * 29 * 24 * 24 + 2 * 4 * 29 * 29 * 6 + 29 * 24 * 24
    assert params == model.count_params() == 4 * (24 * 24 + 24)
    assert graph["block/attention"]["op"] == "CachedAttention"


def test_dense_inside_a_composite_is_not_counted_again():
    # The MHA's EinsumDense sublayers own their variables once: nothing left "detached".
    x = keras.Input((29, 24))
    y = layers.MultiHeadAttention(num_heads=4, key_dim=6)(x, x)
    model = keras.Model(x, layers.Dense(7)(y))
    graph, params, _ = counted(model)
    assert params == model.count_params()
    assert graph.detached_params == {}


# -- 4. channels_first layers ---------------------------------------------------------------------

def test_channels_first_conv_reads_channels_on_axis_one():
    x = keras.Input((3, 17, 19))
    y = layers.Conv2D(13, 3, data_format="channels_first")(x)
    y = layers.BatchNormalization(axis=1)(y)
    y = layers.MaxPooling2D(data_format="channels_first")(y)
    y = layers.Conv2D(23, 1, data_format="channels_first")(y)
    y = layers.GlobalAveragePooling2D(data_format="channels_first")(y)
    model = keras.Model(x, layers.Dense(7)(y))
    graph, params, macs = counted(model)
    # conv 3x3 valid on 17x19 -> 15x17, 3 -> 13; pool 2 -> 7x8; conv 1x1 13 -> 23; dense 23 -> 7
    assert macs == 3 * 3 * 15 * 17 * 3 * 13 + 7 * 8 * 13 * 23 + 23 * 7
    assert params == model.count_params()
    assert graph.input_shape == (3, 17, 19)
    convs = [a for _, a in graph.ops() if a["kind"] == Kind.CONV]
    assert [(a["in_channels"], a["out_channels"], a["out_spatial"]) for a in convs] == \
        [(3, 13, (15, 17)), (13, 23, (7, 8))]


# -- 10. refusals with advice that works for the input -------------------------------------------

def test_subclassed_model_is_told_to_use_the_functional_api():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(7)

        def call(self, x):
            return self.dense(x)

    model = Net()
    model(torch.zeros(1, 13).numpy())  # called on data: built, still no layer graph
    with pytest.raises(GraphError, match=r"Net is a subclassed Keras model.*functional API"):
        load_keras_model(model, name="net.keras")


def test_sequence_model_without_a_length_is_told_to_fix_it_in_keras_input():
    x = keras.Input((None, 13))
    model = keras.Model(x, layers.LSTM(23)(x))
    with pytest.raises(GraphError, match=r"seq.keras: input shape \(None, 13\) has unknown sizes; "
                                         r"give keras.Input every size") as info:
        load_keras_model(model, name="seq.keras")
    assert "--input-shape" not in str(info.value)


def advised_model(model, name):
    """The model the refusal's advice builds: its code run as written."""
    with pytest.raises(GraphError, match=r"keras\.Model\(inputs, model\(inputs\)\)") as info:
        load_keras_model(model, name=name)
    code = str(info.value).split("`")[1]
    scope = {"keras": keras, "model": model}
    exec(code, scope)  # noqa: S102 - the message's own code, on the test's model
    return scope["model"], code


def test_advice_for_unknown_sizes_wraps_the_model_and_then_counts():
    x = keras.Input((None, 13))
    model, code = advised_model(keras.Model(x, layers.LSTM(23)(x)), "seq.keras")
    assert code == ("inputs = keras.Input(shape=(128, 13)); "
                    "model = keras.Model(inputs, model(inputs))")
    graph, params, macs = counted(model)
    assert macs == 128 * 4 * 23 * (13 + 23)  # 128 steps of 4 gates, input and state products
    assert params == model.count_params() == 4 * (13 * 23 + 23 * 23 + 23)


def test_advice_for_unknown_sizes_keeps_named_integer_inputs():
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    mask = keras.Input((None,), dtype="int32", name="padding_mask")
    x = layers.Embedding(50, 24)(tokens) * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    model, code = advised_model(keras.Model({"token_ids": tokens, "padding_mask": mask},
                                            layers.Dense(7)(x)), "text.keras")
    assert "'token_ids': keras.Input(shape=(128,), dtype='int32', name='token_ids')" in code
    graph, params, macs = counted(model)
    assert macs == 128 * 24 * 7
    assert params == model.count_params() == 50 * 24 + 24 * 7 + 7


def test_unbuilt_sequential_is_told_to_start_with_an_input():
    with pytest.raises(GraphError, match="Sequential model without an input shape"):
        load_keras_model(keras.Sequential([layers.Dense(7)]), name="seq")


# -- the Keras path imports no torch (issue 9) ----------------------------------------------------

def test_keras_path_imports_no_torch_in_any_order():
    script = """
import sys
import keras
from morphscope.importers.keras_importer import load_keras_model
x = keras.Input((13,))
graph = load_keras_model(keras.Model(x, keras.layers.Dense(7)(x)))
print(len(graph), sorted(m for m in ("torch", "torchvision", "triton") if m in sys.modules))
"""
    for prelude in ("", "import morphscope.importers.keras_importer\n"):
        run = subprocess.run([sys.executable, "-c", prelude + script], capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.split()[-1] == "[]" and run.stdout.split()[0] == "3"  # input, dense, output


# -- composite models as users write them ---------------------------------------------------------

def test_transformer_encoder_block_counts_every_product():
    x = keras.Input((29, 24))
    attended = layers.MultiHeadAttention(num_heads=4, key_dim=6, name="mha")(x, x)
    y = layers.LayerNormalization()(layers.Add()([x, attended]))
    hidden = layers.Dense(48, activation="gelu")(y)
    out = layers.LayerNormalization()(layers.Add()([y, layers.Dense(24)(hidden)]))
    model = keras.Model(x, layers.Dense(7)(layers.GlobalAveragePooling1D()(out)))
    graph, params, macs = counted(model)
    attention = 3 * 29 * 24 * 24 + 2 * 4 * 29 * 29 * 6 + 29 * 24 * 24
    feed_forward = 29 * 24 * 48 + 29 * 48 * 24
    assert macs == attention + feed_forward + 24 * 7
    assert params == model.count_params()
    assert graph["mha"]["kind"] == Kind.OPAQUE  # its channels are pinned, not guessed


def test_stacked_bidirectional_gru_text_model():
    tokens = keras.Input((29,), dtype="int32")
    x = layers.Embedding(1000, 13)(tokens)
    x = layers.Bidirectional(layers.GRU(23, return_sequences=True))(x)
    x = layers.Bidirectional(layers.GRU(11))(x)
    model = keras.Model(tokens, layers.Dense(3)(x))
    graph, params, macs = counted(model)
    # GRU: 3 gates; the second layer reads both directions' 2*23 features
    first = 2 * 29 * 3 * 23 * (13 + 23)
    second = 2 * 29 * 3 * 11 * (2 * 23 + 11)
    assert macs == first + second + 2 * 11 * 3
    assert params == model.count_params()
