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
    from importers.keras_importer import import_keras

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
