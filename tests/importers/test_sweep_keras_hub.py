"""keras_hub backbones, built from constructor arguments with random weights (nothing is
downloaded), import with Keras' own parameter count and with the MACs TensorFlow counts.

Text backbones take any sequence length; each is called on inputs of a fixed length
(``SEQUENCE``) inside a wrapping ``keras.Model``, the way a user gives it one.

The MAC reference is the backbone's TensorFlow graph at batch 1 (``tf.function`` on the
model): TensorFlow's profiler float ops (``tf.compat.v1.profiler``, its registered
statistics) over the matrix-product and conv ops, halved, plus for each ``Einsum`` op, which
TensorFlow registers no statistic for, the product of its index sizes from the graph's shapes.
It reads no Keras layer and nothing the importer computes.
"""

import math

import pytest

from morphscope.analyzers.cost import compile_costs, seed_costs, totals_of
from morphscope.importers.keras_importer import import_keras, load_keras_model

keras = import_keras()
import keras_hub  # noqa: E402 - after import_keras, which quiets TensorFlow's start-up
import tensorflow as tf  # noqa: E402

MODELS = keras_hub.models
IMAGE = (32, 32, 3)
SEQUENCE = 11
TEXT = dict(vocabulary_size=53, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=24,
            max_sequence_length=SEQUENCE)
PRODUCT_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D", "Conv3D",
               "DepthwiseConv2dNative")

BACKBONES = {
    "vit": lambda: MODELS.ViTBackbone(image_shape=IMAGE, patch_size=8, num_layers=2, num_heads=2,
                                      hidden_dim=16, mlp_dim=24),
    "swin": lambda: MODELS.SwinTransformerBackbone(image_shape=IMAGE, embed_dim=8, depths=[2, 2],
                                                   num_heads=[2, 4], window_size=4, patch_size=2),
    "resnet_bottleneck": lambda: MODELS.ResNetBackbone(
        input_conv_filters=[8], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2],
        block_type="bottleneck_block", image_shape=IMAGE),
    "densenet": lambda: MODELS.DenseNetBackbone(stackwise_num_repeats=[2, 2], image_shape=IMAGE,
                                                growth_rate=8),
    "vgg": lambda: MODELS.VGGBackbone(stackwise_num_repeats=[1, 2], stackwise_num_filters=[8, 16],
                                      image_shape=IMAGE),
    "bert": lambda: fixed_length(MODELS.BertBackbone(**TEXT)),
    "roberta": lambda: fixed_length(MODELS.RobertaBackbone(**TEXT)),
    "distil_bert": lambda: fixed_length(MODELS.DistilBertBackbone(**TEXT)),
    # ALBERT: one transformer layer shared by every layer of a group (params once, MACs twice)
    "albert": lambda: fixed_length(MODELS.AlbertBackbone(**{**TEXT, "embedding_dim": 8})),
    # GPT2: its decoder's CachedMultiHeadAttention subclasses MultiHeadAttention (same formula)
    # and inherits a compute_output_spec without the `cache` argument its call takes
    "gpt2": lambda: fixed_length(MODELS.GPT2Backbone(**TEXT)),
    # its logits reuse the token embedding (ReversibleEmbedding, reverse=True): one more
    # product, on weights already counted
    "gpt2_causal_lm": lambda: fixed_length(MODELS.GPT2CausalLM(
        backbone=MODELS.GPT2Backbone(**TEXT), preprocessor=None)),
}


def fixed_length(backbone):
    inputs = {t.name: keras.Input((SEQUENCE,), dtype=t.dtype, name=t.name)
              for t in backbone.inputs}
    return keras.Model(inputs, backbone(inputs))


def tensorflow_macs(model):
    specs = [tf.TensorSpec((1, *t.shape[1:]), t.dtype) for t in model.inputs]

    def run(*xs):
        return model(keras.tree.pack_sequence_as(model._inputs_struct, list(xs)), training=False)

    graph = tf.function(run).get_concrete_function(*specs).graph
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = (builder(builder.float_operation())
               .with_accounted_types([f"^{t}$" for t in PRODUCT_OPS]).with_empty_output().build())
    flops = tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
    einsum = 0
    for op in graph.get_operations():
        if op.type == "Einsum":
            sizes = {}
            operands = op.get_attr("equation").decode().split("->")[0].split(",")
            for letters, tensor in zip(operands, op.inputs):
                sizes.update(zip(letters, tensor.shape.as_list()))
            einsum += math.prod(sizes.values())
    return flops // 2 + einsum


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.filterwarnings("error::morphscope.importers.keras_importer.UncountedMacsWarning")
def test_keras_hub_backbone_counts_match_keras_and_tensorflow(name):
    model = BACKBONES[name]()
    graph = load_keras_model(model, name=name)
    costs = compile_costs(graph)
    totals = totals_of(costs, seed_costs(costs))
    assert totals["params"] == model.count_params()
    assert totals["macs"] == tensorflow_macs(model)
    assert not graph.detached_params
