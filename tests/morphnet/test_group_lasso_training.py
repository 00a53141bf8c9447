"""Group lasso on a network without batch norm: a VGG-style net and an MLP become prunable.

The VGG-style net (no bn anywhere) is trained a few steps with the group-lasso FLOP
regularizer; the regularizer's ``cost()`` must equal what ``morphscope report`` reads from the
saved state_dict (kernel norms, same threshold), and what the norms written out in numpy give.
"""

import json

import numpy as np
import pytest

from morphscope.cli.main import main

THRESHOLD = 0.05


def vgg_no_bn():
    from torch import nn

    # x(3x16x16) -> conv 3x3 (11) -> relu -> pool -> conv 3x3 (13) -> relu -> pool
    #            -> flatten (13*4*4) -> fc (17) -> relu -> fc (5)
    return nn.Sequential(nn.Conv2d(3, 11, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(11, 13, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(13 * 4 * 4, 17), nn.ReLU(), nn.Linear(17, 5))


def rms_alive(weight, threshold):
    """morph-net's rule in numpy: alive when sqrt(mean w**2) over a channel's weights > t."""
    rows = weight.reshape(weight.shape[0], -1).astype(np.float64)
    return int((np.sqrt((rows ** 2).mean(axis=1)).astype(np.float32) > np.float32(threshold)).sum())


def test_vgg_without_bn_trains_with_group_lasso_and_report_agrees(tmp_path, capsys):
    import torch
    import torch.nn.functional as F

    from morphscope.regularizers.group_lasso import GroupLassoFlopsRegularizer

    torch.manual_seed(0)
    model = vgg_no_bn()
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 5, (32,))
    reg = GroupLassoFlopsRegularizer(model, example_input=x[:1], threshold=THRESHOLD)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y) + 2e-7 * reg.loss()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    # Some channels fell under the threshold: the structure shrank below the seed.
    seed_flops = 2 * (3 * 3 * 16 * 16 * 3 * 11 + 3 * 3 * 8 * 8 * 11 * 13 + 13 * 16 * 17 + 17 * 5)
    assert reg.cost() < seed_flops

    weights = tmp_path / "vgg.pt"
    torch.save(model.state_dict(), weights)
    exported = tmp_path / "vgg.pt2"
    torch.export.save(torch.export.export(model.eval(), (x[:1],)), exported)
    assert main(["report", str(exported), "--checkpoint", str(weights), "--threshold", str(THRESHOLD),
                 "--json"]) == 0
    [morphed] = json.loads(capsys.readouterr().out)["morphed"]
    assert morphed["flops"] == reg.cost()

    # The same widths from the norms in numpy: conv1, conv2 and fc1 prunable; the logits pinned.
    alive = [rms_alive(model[i].weight.detach().numpy(), THRESHOLD) for i in (0, 3, 7)]
    assert list(morphed["widths"].values())[:3] == alive
    a1, a2, a3 = alive
    # FLOPs = 2 x MACs: conv 3x3 at 16x16 and 8x8, flatten keeps 4x4 pixels per channel, logits 5.
    assert morphed["flops"] == 2 * (9 * 256 * 3 * a1 + 9 * 64 * a1 * a2 + a2 * 16 * a3 + a3 * 5)


def test_mlp_group_lasso_size_regularizer_keras_equals_numpy_rule():
    from morphscope.importers.keras_importer import import_keras
    from morphscope.regularizers.group_lasso import KerasGroupLassoModelSizeRegularizer

    keras = import_keras()
    inputs = keras.Input((6,), name="x")
    h = keras.layers.Dense(7, activation="relu", name="fc1")(inputs)
    outputs = keras.layers.Dense(3, name="fc2")(h)
    model = keras.Model(inputs, outputs)
    kernel = np.random.default_rng(3).normal(0, 0.1, (6, 7)).astype("float32")
    kernel[:, [1, 4]] *= 0.01  # two outputs with tiny weights
    model.get_layer("fc1").kernel.assign(kernel)
    reg = KerasGroupLassoModelSizeRegularizer(model, threshold=0.02)
    alive = rms_alive(kernel.T, 0.02)
    assert alive == 5
    assert reg.cost() == 6 * alive + alive * 3  # size: in*out kernel weights
    # G = size coefficient 1: fc1 6*S1 (the input has no score), fc2 3*S1 (logits pinned).
    s1 = np.sqrt((kernel.astype(np.float64) ** 2).mean(axis=0)).sum()
    assert float(reg.loss()) == pytest.approx(6 * s1 + 3 * s1, rel=1e-5)


def test_l1_fraction_outside_unit_interval_is_refused():
    from morphscope.analyzers.group_lasso import check_l1_fraction
    from morphscope.errors import MorphScopeError

    with pytest.raises(MorphScopeError, match="l1_fraction 1.5 is outside"):
        check_l1_fraction(1.5)


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_group_lasso_scores_are_the_analyzers_norms(framework):
    # The regularizer's live scores, with l1_fraction 0.5, equal the numpy reference
    # (morph-net's GroupLassoRegularizerTest formula: l1 * mean|w| + (1 - l1) * sqrt(mean w**2)).
    from morphscope.analyzers.group_lasso import channel_norms

    rng = np.random.default_rng(5)
    kernel = rng.normal(size=(6, 7)).astype("float32")  # (in, out) as Keras stores it
    if framework == "torch":
        import torch

        from morphscope.regularizers.group_lasso import GroupLassoLatencyRegularizer

        model = torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        with torch.no_grad():
            model[0].weight.copy_(torch.as_tensor(kernel.T))
        reg = GroupLassoLatencyRegularizer(model, example_input=torch.zeros(1, 6), l1_fraction=0.5)
        scores = reg.gammas()["0"]
    else:
        from morphscope.importers.keras_importer import import_keras
        from morphscope.regularizers.group_lasso import KerasGroupLassoLatencyRegularizer

        keras = import_keras()
        inputs = keras.Input((6,))
        model = keras.Model(inputs, keras.layers.Dense(3, name="fc2")(keras.layers.Dense(7, name="fc1")(inputs)))
        model.get_layer("fc1").kernel.assign(kernel)
        reg = KerasGroupLassoLatencyRegularizer(model, l1_fraction=0.5)
        scores = reg.gammas()["fc1"]
    expected = 0.5 * np.abs(kernel).mean(axis=0) + 0.5 * np.sqrt((kernel.astype(np.float64) ** 2).mean(axis=0))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    np.testing.assert_allclose(channel_norms(kernel.T, 0.5), expected, rtol=1e-6)
    assert reg.cost() == pytest.approx(reg.width_model.target_cost(reg.alive_widths(), "latency"))
