"""Small networks built the same way in PyTorch and Keras, with odd sizes so a swapped axis
fails: a 17x19 input, 13/23/7/29 channels.

    x(3) -> stem conv 3x3 (13) -> bn -> relu -+-> branch_a conv 1x1 (23) ---------------+
                                              +-> branch_b depthwise 3x3 (13) -> 1x1 (7) +
          -> concat (23+7 = 30) -> head conv 1x1 (29, bias) -> global pool -> fc (5)
"""

H, W = 17, 19


def torch_tower_net():
    import torch
    from torch import nn

    class TowerNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 13, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(13)
            self.relu = nn.ReLU()
            self.branch_a = nn.Conv2d(13, 23, 1, bias=False)
            self.branch_b_dw = nn.Conv2d(13, 13, 3, padding=1, groups=13, bias=False)
            self.branch_b_pw = nn.Conv2d(13, 7, 1, bias=False)
            self.head = nn.Conv2d(30, 29, 1, bias=True)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(29, 5)

        def forward(self, x):
            x = self.relu(self.bn(self.stem(x)))
            x = torch.cat([self.branch_a(x), self.branch_b_pw(self.branch_b_dw(x))], dim=1)
            return self.fc(torch.flatten(self.pool(self.head(x)), 1))

    return TowerNet()


def keras_tower_net():
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    layers = keras.layers

    inputs = keras.Input((H, W, 3), name="input")
    x = layers.Conv2D(13, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    a = layers.Conv2D(23, 1, use_bias=False, name="branch_a")(x)
    b = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="branch_b_dw")(x)
    b = layers.Conv2D(7, 1, use_bias=False, name="branch_b_pw")(b)
    x = layers.Concatenate(name="concat")([a, b])
    x = layers.Conv2D(29, 1, use_bias=True, name="head")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(5, name="fc")(x)
    return keras.Model(inputs, outputs, name="tower_net")


# Conv/linear MACs of the tower net, layer by layer: kh*kw*H*W*in*out (depthwise: kh*kw*H*W*c).
TOWER_MACS = {
    "stem": 3 * 3 * H * W * 3 * 13,
    "branch_a": 1 * 1 * H * W * 13 * 23,
    "branch_b_dw": 3 * 3 * H * W * 13,
    "branch_b_pw": 1 * 1 * H * W * 13 * 7,
    "head": 1 * 1 * H * W * 30 * 29,
    "fc": 29 * 5,
}
# Trainable parameters: kernels, biases, bn gamma+beta.
TOWER_TRAINABLE = {
    "stem": 3 * 3 * 3 * 13,
    "bn": 2 * 13,
    "branch_a": 13 * 23,
    "branch_b_dw": 3 * 3 * 13,
    "branch_b_pw": 13 * 7,
    "head": 30 * 29 + 29,
    "fc": 29 * 5 + 5,
}


# -- Nets with bn scales for the MorphNet analysis tests; layer names agree across frameworks.

def _torch_parts():
    import torch
    from torch import nn

    def conv(cin, cout, k=3, groups=1, bias=False):
        return nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)

    return torch, nn, conv


def torch_residual_net():
    """stem(13) -> [u1a(11) -> u1b(13)] + shortcut -> [u2a(7) -> u2b(13)] + shortcut -> fc(5)"""
    torch, nn, conv = _torch_parts()

    class ResidualNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn_stem = conv(3, 13), nn.BatchNorm2d(13)
            self.u1a, self.bn_u1a = conv(13, 11), nn.BatchNorm2d(11)
            self.u1b, self.bn_u1b = conv(11, 13), nn.BatchNorm2d(13)
            self.u2a, self.bn_u2a = conv(13, 7), nn.BatchNorm2d(7)
            self.u2b, self.bn_u2b = conv(7, 13), nn.BatchNorm2d(13)
            self.fc = nn.Linear(13, 5)

        def forward(self, x):
            x = torch.relu(self.bn_stem(self.stem(x)))
            x = torch.relu(x + self.bn_u1b(self.u1b(torch.relu(self.bn_u1a(self.u1a(x))))))
            x = torch.relu(x + self.bn_u2b(self.u2b(torch.relu(self.bn_u2a(self.u2a(x))))))
            return self.fc(x.mean((2, 3)))

    return ResidualNet()


def torch_concat_net():
    """stem(13) -> [a: 1x1 (23) | b: 3x3 (7)] -> concat (30) -> head 1x1 (29) -> fc(5)"""
    torch, nn, conv = _torch_parts()

    class ConcatNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn_stem = conv(3, 13), nn.BatchNorm2d(13)
            self.branch_a, self.bn_a = conv(13, 23, 1), nn.BatchNorm2d(23)
            self.branch_b, self.bn_b = conv(13, 7), nn.BatchNorm2d(7)
            self.head, self.bn_head = conv(30, 29, 1), nn.BatchNorm2d(29)
            self.fc = nn.Linear(29, 5)

        def forward(self, x):
            x = torch.relu(self.bn_stem(self.stem(x)))
            x = torch.cat([self.bn_a(self.branch_a(x)), self.bn_b(self.branch_b(x))], dim=1)
            return self.fc(torch.relu(self.bn_head(self.head(x))).mean((2, 3)))

    return ConcatNet()


def torch_se_net():
    """stem(13) -> x * sigmoid(fc2(relu(fc1(pool(x))))) with fc1 13->7, fc2 7->13 -> head(23)"""
    torch, nn, conv = _torch_parts()

    class SENet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn_stem = conv(3, 13), nn.BatchNorm2d(13)
            self.se_fc1, self.se_fc2 = conv(13, 7, 1, bias=True), conv(7, 13, 1, bias=True)
            self.head, self.bn_head = conv(13, 23, 1), nn.BatchNorm2d(23)
            self.fc = nn.Linear(23, 5)

        def forward(self, x):
            x = torch.relu(self.bn_stem(self.stem(x)))
            gate = torch.sigmoid(self.se_fc2(torch.relu(self.se_fc1(x.mean((2, 3), keepdim=True)))))
            x = torch.relu(self.bn_head(self.head(x * gate)))
            return self.fc(x.mean((2, 3)))

    return SENet()


def torch_separable_net():
    """stem(13) -> depthwise 3x3 (13) -> pointwise 1x1 (23) -> fc(5)"""
    torch, nn, conv = _torch_parts()

    class SeparableNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn_stem = conv(3, 13), nn.BatchNorm2d(13)
            self.dw, self.bn_dw = conv(13, 13, groups=13), nn.BatchNorm2d(13)
            self.pw, self.bn_pw = conv(13, 23, 1), nn.BatchNorm2d(23)
            self.fc = nn.Linear(23, 5)

        def forward(self, x):
            x = torch.relu(self.bn_stem(self.stem(x)))
            x = torch.relu(self.bn_dw(self.dw(x)))
            x = torch.relu(self.bn_pw(self.pw(x)))
            return self.fc(x.mean((2, 3)))

    return SeparableNet()


def _keras_parts():
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    layers = keras.layers

    def conv(x, filters, name, k=3, bias=False):
        return layers.Conv2D(filters, k, padding="same", use_bias=bias, name=name)(x)

    def bn(x, name):
        return layers.BatchNormalization(name=name)(x)

    def relu(x):
        return layers.ReLU()(x)

    return keras, layers, conv, bn, relu


def keras_residual_net():
    keras, layers, conv, bn, relu = _keras_parts()
    inputs = keras.Input((H, W, 3))
    x = relu(bn(conv(inputs, 13, "stem"), "bn_stem"))
    y = bn(conv(relu(bn(conv(x, 11, "u1a"), "bn_u1a")), 13, "u1b"), "bn_u1b")
    x = relu(layers.Add(name="add1")([x, y]))
    y = bn(conv(relu(bn(conv(x, 7, "u2a"), "bn_u2a")), 13, "u2b"), "bn_u2b")
    x = relu(layers.Add(name="add2")([x, y]))
    outputs = layers.Dense(5, name="fc")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="residual_net")


def keras_concat_net():
    keras, layers, conv, bn, relu = _keras_parts()
    inputs = keras.Input((H, W, 3))
    x = relu(bn(conv(inputs, 13, "stem"), "bn_stem"))
    x = layers.Concatenate(name="cat")([bn(conv(x, 23, "branch_a", k=1), "bn_a"),
                                        bn(conv(x, 7, "branch_b"), "bn_b")])
    x = relu(bn(conv(x, 29, "head", k=1), "bn_head"))
    outputs = layers.Dense(5, name="fc")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="concat_net")


def keras_se_net():
    keras, layers, conv, bn, relu = _keras_parts()
    inputs = keras.Input((H, W, 3))
    x = relu(bn(conv(inputs, 13, "stem"), "bn_stem"))
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Activation("sigmoid")(conv(relu(conv(gate, 7, "se_fc1", k=1, bias=True)),
                                             13, "se_fc2", k=1, bias=True))
    x = layers.Multiply(name="gate")([x, gate])
    x = relu(bn(conv(x, 23, "head", k=1), "bn_head"))
    outputs = layers.Dense(5, name="fc")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="se_net")


def keras_separable_net():
    keras, layers, conv, bn, relu = _keras_parts()
    inputs = keras.Input((H, W, 3))
    x = relu(bn(conv(inputs, 13, "stem"), "bn_stem"))
    x = relu(bn(layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x), "bn_dw"))
    x = relu(bn(conv(x, 23, "pw", k=1), "bn_pw"))
    outputs = layers.Dense(5, name="fc")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="separable_net")


def alive_at(size, channels):
    """A gamma vector: 0.5 on the listed channels, 0 elsewhere."""
    import numpy as np

    gamma = np.zeros(size, dtype=np.float32)
    gamma[list(channels)] = 0.5
    return gamma


def torch_checkpoint(model, gammas, path):
    """Save a state_dict of ``model`` with the given bn gammas set (by bn module name)."""
    import torch

    state = model.state_dict()
    for bn, gamma in gammas.items():
        state[f"{bn}.weight"] = torch.as_tensor(gamma)
    torch.save(state, path)
    return path


def keras_checkpoint(model, gammas, path):
    """Set the gammas in ``model`` and save its weights (``.weights.h5``)."""
    for bn, gamma in gammas.items():
        model.get_layer(bn).gamma.assign(gamma)
    model.save_weights(path)
    return path


def random_gammas(graph, seed, dead_fraction):
    """Trained-looking scales for every bn of ``graph``: uniform in [0, 1), about
    ``dead_fraction`` of them exactly zero."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {n: rng.uniform(0, 1, a["out_channels"]) * (rng.random(a["out_channels"]) > dead_fraction)
            for n, a in graph.ops() if a.get("gamma_key")}


class TouchOnUnpickle:
    """Unpickling this opens (creates) ``path``: a stand-in for a code payload in a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
