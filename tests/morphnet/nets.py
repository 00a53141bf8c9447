"""morph-net's unit-test networks, built from one spec in PyTorch and in Keras.

Each spec is a list of layers, in order, exactly as the morph-net test builds them with
TF-slim (NHWC; ``padding='SAME'``; a conv with ``normalizer_fn=batch_norm`` has no bias and a
bn with a learnable scale; ``convX`` is the ReLU output). Layer tuples:

- ``("conv", name, src, out, (kh, kw), stride, bn, relu)``; ``("convt", name, src, out, (kh, kw), stride)``
- ``("dw", name, src, (kh, kw), bn, relu)``: ``separable_conv2d(x, None, k, depth_multiplier=1)``
- ``("concat", name, [srcs])``, ``("add", name, [srcs])``, ``("relu", name, src)``
- ``("subsample", name, src, stride)``: slim's 1x1 max pool shortcut
- ``("mean", name, src)``: ``tf.reduce_mean(x, axis=(1, 2))``
- ``("fc", name, src, out, relu)``

Op names in both frameworks: the layer name for the conv/dense op, ``<name>_bn`` for its bn.
Gammas are set on the live model (``set_gammas``); PyTorch paddings are chosen so every
output has TF's SAME size (``ceil(in / stride)``).
"""

from __future__ import annotations

import numpy as np

IMAGE = (17, 19, 3)  # morph-net's image_stub: [1, 17, 19, NUM_CHANNELS]

# flop_regularizer_test.GammaFlopLossTest (also latency_regularizer_test): the concat model.
CONCAT_NET = [
    ("conv", "conv1", "image", 13, (7, 5), 1, True, True),
    ("conv", "conv2", "image", 23, (1, 1), 1, True, True),
    ("concat", "concat", ["conv1", "conv2"]),
    ("conv", "conv3", "concat", 29, (3, 3), 2, True, True),
    ("conv", "conv4", "concat", 31, (1, 1), 1, True, True),
]
CONCAT_OUTPUTS = ["conv3", "conv4"]

# testing/add_concat_model_stub.py (cost_calculator_test.testImageIsNotZerothOutputOfOp).
ADD_CONCAT_NET = [
    ("conv", "conv1", "image", 7, (7, 5), 1, True, True),
    ("conv", "conv2", "image", 5, (1, 1), 1, True, True),
    ("concat", "concat", ["conv1", "conv2"]),
    ("conv", "conv3", "concat", 4, (1, 1), 1, True, True),
    ("conv", "conv4", "conv3", 12, (3, 3), 1, True, True),
    ("add", "add", ["concat", "conv4"]),
    ("conv", "conv5", "add", 3, (3, 3), 2, True, True),
]
ADD_CONCAT_OUTPUTS = ["conv5"]


def depthwise_net(bn: bool) -> list:
    """flop_regularizer_test.GammaFlopLossWithDepthwiseConvTestBase (with or without bn on
    the depthwise convs; the convs always have bn)."""
    return [
        ("dw", "dw1", "image", (3, 3), bn, True),
        ("conv", "conv1", "dw1", 13, (7, 5), 1, True, True),
        ("conv", "conv2", "image", 23, (1, 1), 1, True, True),
        ("dw", "dw2", "conv2", (5, 5), bn, True),
        ("concat", "concat", ["conv1", "dw2"]),
        ("conv", "conv3", "concat", 29, (3, 3), 2, True, True),
    ]


DEPTHWISE_OUTPUTS = ["conv3"]
RESIDUAL_IMAGE = (2, 2, 3)  # GammaFlopResidualConnectionsLossTest: tf.constant(0.0, [1, 2, 2, 3])


def _bottleneck(unit: str, src: str, depth: int, bottleneck: int, stride: int, depth_in: int) -> list:
    """slim resnet_v1.bottleneck: shortcut (1x1 conv if depth changes, else a subsample),
    conv1 1x1, conv2 3x3 (conv2d_same, stride), conv3 1x1 without activation, relu(sum)."""
    shortcut = (("subsample", f"{unit}/shortcut", src, stride) if depth == depth_in
                else ("conv", f"{unit}/shortcut", src, depth, (1, 1), stride, True, False))
    return [
        shortcut,
        ("conv", f"{unit}/conv1", src, bottleneck, (1, 1), 1, True, True),
        ("conv", f"{unit}/conv2", f"{unit}/conv1", bottleneck, (3, 3), stride, True, True),
        ("conv", f"{unit}/conv3", f"{unit}/conv2", depth, (1, 1), 1, True, False),
        ("add", f"{unit}/add", [f"{unit}/shortcut", f"{unit}/conv3"]),
        ("relu", f"{unit}/relu", f"{unit}/add"),
    ]


# GammaFlopResidualConnectionsLossTest: resnet_v1_block('block1', base_depth=7, num_units=2,
# stride=2) = units {28, 7, stride 1}, {28, 7, stride 2}; reduce_mean; fully_connected(23).
RESIDUAL_NET = [
    *_bottleneck("unit_1", "image", 28, 7, 1, 3),
    *_bottleneck("unit_2", "unit_1/relu", 28, 7, 2, 28),
    ("mean", "mean", "unit_2/relu"),
    ("fc", "FC", "mean", 23, True),
]
RESIDUAL_OUTPUTS = ["FC"]

# flop_regularizer_test.GroupLassoFlopRegTest.testFlopRegularizer (no bn: bias + relu).
GROUP_LASSO_NET = [
    ("conv", "conv1", "image", 13, (7, 5), 1, False, True),
    ("conv", "conv2", "image", 23, (1, 1), 1, False, True),
    ("concat", "concat", ["conv1", "conv2"]),
    ("convt", "convt", "image", 29, (7, 5), 3),
]
GROUP_LASSO_OUTPUTS = ["concat", "convt"]

# GroupLassoFlopRegTest.testFlopRegularizerWithMatMul: x[2, 6] -> matmul1 (4) -> relu ->
# matmul2 (1) -> relu, both with a bias.
MATMUL_NET = [("fc", "matmul1", "image", 4, True), ("fc", "matmul2", "matmul1", 1, True)]
MATMUL_OUTPUTS = ["matmul2"]

# GammaFlopDecoratedTest / GammaModelSizeDecoratedTest: one 1x1 conv (2) with bn;
# GroupLassoFlopDecoratedTest: the same conv without bn (a kernel of ones).
ONE_CONV_NET = [("conv", "conv1", "image", 2, (1, 1), 1, True, True)]
ONE_CONV_NO_BN_NET = [("conv", "conv1", "image", 2, (1, 1), 1, False, False)]
ONE_CONV_OUTPUTS = ["conv1"]


def _same_padding(size: int, kernel: int, stride: int) -> int:
    """A symmetric PyTorch padding giving TF's SAME output size ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2 + total % 2 if stride > 1 else total // 2


def _shapes(spec: list, image: tuple) -> dict:
    """(H, W, C) of every layer's output, as TF computes it."""
    shapes = {"image": image}
    for layer in spec:
        kind, name = layer[0], layer[1]
        if kind in ("conv", "convt"):
            h, w, _ = shapes[layer[2]]
            s = layer[5]
            shapes[name] = (h * s, w * s, layer[3]) if kind == "convt" else (-(-h // s), -(-w // s), layer[3])
        elif kind == "dw":
            shapes[name] = shapes[layer[2]]
        elif kind == "concat":
            parts = [shapes[s] for s in layer[2]]
            shapes[name] = (*parts[0][:2], sum(p[2] for p in parts))
        elif kind == "add":
            shapes[name] = shapes[layer[2][0]]
        elif kind == "subsample":
            h, w, c = shapes[layer[2]]
            shapes[name] = (-(-h // layer[3]), -(-w // layer[3]), c)
        elif kind == "mean":
            shapes[name] = (shapes[layer[2]][2],)
        elif kind == "fc":
            shapes[name] = (layer[3],)
        else:  # relu
            shapes[name] = shapes[layer[2]]
    return shapes


def torch_net(spec: list, outputs: list, image: tuple = IMAGE):
    """The spec as a ``torch.nn.Module`` (NCHW), modules named as the spec names them
    (``/`` becomes ``_``: ``unit_1/conv1`` -> ``unit_1_conv1``)."""
    import torch
    from torch import nn

    shapes = _shapes(spec, image)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            for layer in spec:
                kind, name = layer[0], torch_name(layer[1])
                if kind == "conv":
                    _, _, src, out, (kh, kw), stride, bn, _ = layer
                    h, w, c = shapes[src]
                    pad = (_same_padding(h, kh, stride), _same_padding(w, kw, stride))
                    setattr(self, name, nn.Conv2d(c, out, (kh, kw), stride, pad, bias=not bn))
                    if bn:
                        setattr(self, f"{name}_bn", nn.BatchNorm2d(out))
                elif kind == "convt":
                    _, _, src, out, (kh, kw), stride = layer
                    c = shapes[src][2]
                    pad = ((kh - stride + 1) // 2, (kw - stride + 1) // 2)
                    setattr(self, name, nn.ConvTranspose2d(c, out, (kh, kw), stride, pad))
                elif kind == "dw":
                    _, _, src, (kh, kw), bn, _ = layer
                    c = shapes[src][2]
                    setattr(self, name, nn.Conv2d(c, c, (kh, kw), 1, (kh // 2, kw // 2), groups=c, bias=not bn))
                    if bn:
                        setattr(self, f"{name}_bn", nn.BatchNorm2d(c))
                elif kind == "fc":
                    setattr(self, name, nn.Linear(shapes[layer[2]][0], layer[3]))
                elif kind == "subsample":
                    setattr(self, name, nn.MaxPool2d(1, layer[3]))

        def forward(self, x):
            values = {"image": x}
            for layer in spec:
                kind, name = layer[0], layer[1]
                if kind in ("conv", "dw"):
                    y = getattr(self, torch_name(name))(values[layer[2]])
                    if layer[-2]:
                        y = getattr(self, f"{torch_name(name)}_bn")(y)
                    values[name] = torch.relu(y) if layer[-1] else y
                elif kind == "convt":
                    values[name] = getattr(self, name)(values[layer[2]])
                elif kind == "fc":
                    y = getattr(self, name)(values[layer[2]])
                    values[name] = torch.relu(y) if layer[4] else y
                elif kind == "concat":
                    values[name] = torch.cat([values[s] for s in layer[2]], dim=1)
                elif kind == "add":
                    values[name] = values[layer[2][0]] + values[layer[2][1]]
                elif kind == "relu":
                    values[name] = torch.relu(values[layer[2]])
                elif kind == "subsample":
                    values[name] = getattr(self, torch_name(name))(values[layer[2]])
                else:  # mean
                    values[name] = values[layer[2]].mean(dim=(2, 3))
            found = tuple(values[o] for o in outputs)
            return found[0] if len(found) == 1 else found

    return Net()


def torch_name(name: str) -> str:
    """The module name of a spec layer (PyTorch attribute names cannot hold ``/``)."""
    return name.replace("/", "_")


def torch_input(image: tuple = IMAGE):
    """A batch-1 NCHW input of the image's shape."""
    import torch

    return torch.zeros(1, image[-1], *image[:-1]) if len(image) == 3 else torch.ones(1, *image)


def keras_net(spec: list, outputs: list, image: tuple = IMAGE):
    """The spec as a functional ``keras.Model`` (NHWC), layers named as the spec names them
    (``/`` becomes ``_``)."""
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    layers = keras.layers
    values = {"image": keras.Input(image, name="image")}
    for layer in spec:
        kind, name = layer[0], torch_name(layer[1])
        if kind in ("conv", "dw"):
            bn, relu = layer[-2], layer[-1]
            if kind == "conv":
                _, _, src, out, kernel, stride = layer[:6]
                y = layers.Conv2D(out, kernel, stride, padding="same", use_bias=not bn, name=name)(values[src])
            else:
                src, kernel = layer[2], layer[3]
                y = layers.DepthwiseConv2D(kernel, padding="same", use_bias=not bn, name=name)(values[src])
            if bn:
                y = layers.BatchNormalization(name=f"{name}_bn")(y)
            values[layer[1]] = layers.ReLU(name=f"{name}_relu")(y) if relu else y
        elif kind == "convt":
            _, _, src, out, kernel, stride = layer
            values[layer[1]] = layers.Conv2DTranspose(out, kernel, stride, padding="same", name=name)(values[src])
        elif kind == "fc":
            values[layer[1]] = layers.Dense(layer[3], activation="relu" if layer[4] else None,
                                            name=name)(values[layer[2]])
        elif kind == "concat":
            values[layer[1]] = layers.Concatenate(name=name)([values[s] for s in layer[2]])
        elif kind == "add":
            values[layer[1]] = layers.Add(name=name)([values[s] for s in layer[2]])
        elif kind == "relu":
            values[layer[1]] = layers.ReLU(name=name)(values[layer[2]])
        elif kind == "subsample":
            values[layer[1]] = layers.MaxPooling2D(1, layer[3], name=name)(values[layer[2]])
        else:  # mean
            values[layer[1]] = layers.GlobalAveragePooling2D(name=name)(values[layer[2]])
    found = [values[o] for o in outputs]
    return keras.Model(values["image"], found[0] if len(found) == 1 else found)


def set_gammas(framework: str, model, gammas: dict) -> None:
    """Write bn scales (by spec layer name) into the live model."""
    for name, gamma in gammas.items():
        value = np.asarray(gamma, dtype=np.float32)
        if framework == "torch":
            import torch

            getattr(model, f"{torch_name(name)}_bn").weight.data.copy_(torch.as_tensor(value))
        else:
            model.get_layer(f"{torch_name(name)}_bn").gamma.assign(value)


def set_kernel(framework: str, model, name: str, tf_kernel: np.ndarray) -> None:
    """Write a kernel given in TF's layout (``[kh, kw, in, out]``; dense ``[in, out]``;
    transposed ``[kh, kw, out, in]``) into the live model."""
    tf_kernel = np.asarray(tf_kernel, dtype=np.float32)
    if framework == "keras":
        model.get_layer(torch_name(name)).kernel.assign(tf_kernel)
        return
    import torch

    # dense (out, in); conv (out, in, kh, kw); transposed conv (in, out, kh, kw)
    value = tf_kernel.T if tf_kernel.ndim == 2 else tf_kernel.transpose(3, 2, 0, 1)
    getattr(model, torch_name(name)).weight.data.copy_(torch.as_tensor(np.ascontiguousarray(value)))


def set_bias(framework: str, model, name: str, bias: np.ndarray) -> None:
    """Write a bias vector into the live model."""
    bias = np.asarray(bias, dtype=np.float32)
    if framework == "keras":
        model.get_layer(torch_name(name)).bias.assign(bias)
    else:
        import torch

        getattr(model, torch_name(name)).bias.data.copy_(torch.as_tensor(bias))


# -- reading our regularizers -----------------------------------------------------------------------

def build(framework, spec, outputs, image=IMAGE):
    if framework == "torch":
        return torch_net(spec, outputs, image)
    return keras_net(spec, outputs, image)


def regularizer(framework, model, image=IMAGE, family="gamma", resource="flops", **kwargs):
    """One of our regularizers on ``model`` (kwargs: threshold, convention, scope, ...)."""
    if family == "gamma":
        from morphscope.regularizers import keras_regularizer as k, torch_regularizer as t

        cls = {"torch": t.GammaRegularizer, "keras": k.KerasGammaRegularizer}[framework]
    else:
        from morphscope.regularizers import group_lasso as g

        cls = {"torch": g.GroupLassoRegularizer, "keras": g.KerasGroupLassoRegularizer}[framework]
    if framework == "torch":
        return cls(model, example_input=torch_input(image), resource=resource, **kwargs)
    return cls(model, resource=resource, **kwargs)


def per_op(reg, base, names):
    """A base cost (``macs``, ``bytes_moved``, ...) of each named op at the alive widths now."""
    values = reg.width_model.per_op(reg.alive_widths())[base]
    return [float(values[reg.width_model.costs.index[torch_name(n)]]) for n in names]


def per_op_flops(reg, names):
    """FLOPs (2 x MACs) of each named op at the regularizer's alive widths now."""
    return [2 * macs for macs in per_op(reg, "macs", names)]


def per_op_terms(reg, names):
    """The regularization term G of each named op now."""
    per_op = np.asarray(_numpy(reg._evaluate()[0]), dtype=np.float64)
    return [float(per_op[reg.width_model.costs.index[torch_name(n)]]) for n in names]


def value(tensor):
    """A scalar tensor of either framework as a float."""
    return float(_numpy(tensor))


def _numpy(tensor):
    return tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
