"""The part of a network a user chooses: a detector-style backbone with two heads.

    image (3x17x19) -> stem 3x3 (13) -> bn -> relu -> down 3x3 stride 2 (23) -> bn -> relu  [backbone]
        -> cls_a 3x3 (17) -> bn -> relu -> cls_b 1x1 (5)      [class head, a 9x10 map output]
        -> box_a 3x3 (11) -> bn -> relu -> box_b 1x1 (4)      [box head, a 9x10 map output]

Regularized on its backbone only (output boundary: the backbone's last relu), the heads keep
their widths whatever their bn scales say, the report names the analysed part, and the totals
still count the heads (reading the backbone's alive channels).
"""

import json

import numpy as np
import pytest

from morphscope.analyzers.conventions import Scope, scope_summary
from morphscope.errors import MorphScopeError

H, W = 17, 19
H2, W2 = 9, 10  # after the stride-2 conv (SAME)
SIZES = {"stem": 13, "down": 23, "cls_a": 17, "box_a": 11}
# Gammas: stem keeps 6 of 13, down 9 of 23, the heads' bns would keep 3 of 17 and 2 of 11.
ALIVE = {"stem": 6, "down": 9, "cls_a": 3, "box_a": 2}


def gammas():
    return {k: np.r_[np.full(ALIVE[k], 0.9), np.full(n - ALIVE[k], 1e-4)].astype(np.float32)
            for k, n in SIZES.items()}


def torch_detector():
    import torch
    from torch import nn

    def block(c_in, c_out, stride=1):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.down = block(3, 13), block(13, 23, 2)
            self.cls_a, self.box_a = block(23, 17), block(23, 11)
            self.cls_b, self.box_b = nn.Conv2d(17, 5, 1), nn.Conv2d(11, 4, 1)

        def forward(self, x):
            features = self.down(self.stem(x))
            return self.cls_b(self.cls_a(features)), self.box_b(self.box_a(features))

    model = Detector()
    with torch.no_grad():
        for name, gamma in gammas().items():
            getattr(model, name)[1].weight.copy_(torch.as_tensor(gamma))
    return model


def keras_detector():
    from morphscope.importers.keras_importer import import_keras

    keras = import_keras()
    layers = keras.layers

    def block(x, name, filters, stride=1):
        x = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    image = keras.Input((H, W, 3), name="image")
    features = block(block(image, "stem", 13), "down", 23, 2)
    cls = layers.Conv2D(5, 1, name="cls_b")(block(features, "cls_a", 17))
    box = layers.Conv2D(4, 1, name="box_b")(block(features, "box_a", 11))
    model = keras.Model(image, [cls, box])
    for name, gamma in gammas().items():
        model.get_layer(f"{name}_bn").gamma.assign(gamma)
    return model


def regularizer(framework, scope):
    if framework == "torch":
        import torch

        from morphscope.regularizers.torch_regularizer import FlopsRegularizer

        return FlopsRegularizer(torch_detector(), example_input=torch.zeros(1, 3, H, W), scope=scope)
    from morphscope.regularizers.keras_regularizer import KerasFlopsRegularizer

    return KerasFlopsRegularizer(keras_detector(), scope=scope)


def backbone_end(framework):
    return "down.2" if framework == "torch" else "down_relu"


def conv_names(framework):
    if framework == "torch":
        return {"stem": "stem.0", "down": "down.0", "cls_a": "cls_a.0", "box_a": "box_a.0",
                "cls_b": "cls_b", "box_b": "box_b"}
    return {n: n for n in ("stem", "down", "cls_a", "box_a", "cls_b", "box_b")}


def expected_flops(stem, down, cls_a, box_a):
    """FLOPs = 2 x MACs, kh*kw*H*W*in*out per conv, for the given output widths."""
    macs = (9 * H * W * 3 * stem + 9 * H2 * W2 * stem * down
            + 9 * H2 * W2 * down * cls_a + H2 * W2 * cls_a * 5
            + 9 * H2 * W2 * down * box_a + H2 * W2 * box_a * 4)
    return 2 * macs


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_backbone_only_keeps_the_heads_and_counts_them(framework):
    from morphscope.analyzers.morph import source_op_widths

    reg = regularizer(framework, Scope(outputs=(backbone_end(framework),)))
    names = conv_names(framework)
    widths = source_op_widths(reg.graph, reg.width_model, reg.alive_widths())
    # The backbone shrinks; the heads keep 17 and 11 though their bns say 3 and 2.
    assert [widths[names[k]] for k in ("stem", "down", "cls_a", "box_a", "cls_b", "box_b")] == [6, 9, 17, 11, 5, 4]
    assert reg.cost() == expected_flops(6, 9, 17, 11)
    # Only the backbone's bn scales are regularized.
    assert sorted(reg.plan.bn_names) == sorted(n for n in reg.graph.nx if n.startswith(("stem", "down"))
                                                and reg.graph[n]["kind"].value == "bn")
    summary = scope_summary(reg.graph, reg.width_model.spaces, Scope(outputs=(backbone_end(framework),)), "physical")
    assert summary["output_boundary"] == [backbone_end(framework)]
    assert summary["analysed_ops"] < summary["total_ops"]
    assert summary["pinned_outside"] == 2  # cls_a and box_a (cls_b, box_b: model outputs)


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_whole_detector_prunes_heads_and_feature_map_outputs_on_request(framework):
    reg = regularizer(framework, Scope())
    assert reg.cost() == expected_flops(6, 9, 3, 2)  # head outputs (5, 4) pinned by default
    reg = regularizer(framework, Scope(prune_outputs="feature-maps"))
    spaces = reg.width_model.spaces
    names = conv_names(framework)
    # The two outputs are 9x10 maps: prunable now (no bn scales them, so still all alive).
    assert not spaces.pinned[spaces.op_out[names["cls_b"]][0].space]
    assert not spaces.pinned[spaces.op_out[names["box_b"]][0].space]


def test_cli_report_names_the_analysed_part(tmp_path, capsys):
    import torch

    from morphscope.cli.main import main

    model = torch_detector().eval()
    path = tmp_path / "detector.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, H, W),)), path)
    weights = tmp_path / "gammas.pt"
    torch.save(model.state_dict(), weights)
    assert main(["report", str(path), "--checkpoint", str(weights), "--output-boundary", "down.2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scope"]["output_boundary"] == ["down.2"] and doc["scope"]["pinned_outside"] == 2
    [morphed] = doc["morphed"]
    assert morphed["flops"] == expected_flops(6, 9, 17, 11)  # heads included, at full width
    assert main(["report", str(path), "--output-boundary", "down.2"]) == 0
    assert "Analysed: " in capsys.readouterr().out


def test_unknown_boundary_and_bad_pattern_are_refused():
    reg = regularizer("torch", Scope())
    from morphscope.analyzers.conventions import analysed_ops, channel_rules, get_convention

    with pytest.raises(MorphScopeError, match="boundary 'backbone' is not an op of the model"):
        analysed_ops(reg.graph, Scope(outputs=("backbone",)))
    with pytest.raises(MorphScopeError, match="include pattern is not a regular expression"):
        analysed_ops(reg.graph, Scope(include=("(",)))
    with pytest.raises(MorphScopeError, match="unknown prune_outputs 'some'; choose from none"):
        channel_rules(get_convention("physical"), Scope(prune_outputs="some"))
    with pytest.raises(MorphScopeError, match="unknown convention 'tf'; choose from physical, morph-net"):
        get_convention("tf")
