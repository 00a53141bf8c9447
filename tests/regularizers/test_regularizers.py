"""The MorphNet regularizers: one cost model with the analyzers, gradients the formula gives."""

import numpy as np
import pytest

import handbuilt
from morphscope.analyzers.morph import morph
from morphscope.analyzers.widths import compile_width_model
from handbuilt import H, W, alive_at
from morphscope.importers.checkpoints import load_structure
from morphscope.importers.keras_importer import load_keras_model
from morphscope.importers.torch_importer import load_module

NETS = {
    "residual_net": {"bn_stem": alive_at(13, [0, 1, 2, 3, 4]), "bn_u1b": alive_at(13, [3, 4, 5, 6]),
                     "bn_u2b": alive_at(13, [3, 6, 7]), "bn_u1a": alive_at(11, []),
                     "bn_u2a": alive_at(7, [0, 2, 4])},
    "concat_net": {"bn_a": alive_at(23, range(10, 23)), "bn_b": alive_at(7, [0, 3, 4, 5, 6]),
                   "bn_head": alive_at(29, range(11))},
    "se_net": {"bn_stem": alive_at(13, range(9))},
    "separable_net": {"bn_stem": alive_at(13, range(6)), "bn_dw": alive_at(13, range(4, 10))},
}
TARGETS = ["flops", "size", "latency"]


def torch_regularizer(net, gammas, target):
    import torch

    from morphscope.regularizers.torch_regularizer import GammaRegularizer

    module = getattr(handbuilt, f"torch_{net}")()
    state = module.state_dict()
    for bn, gamma in gammas.items():
        state[f"{bn}.weight"] = torch.as_tensor(gamma)
    module.load_state_dict(state)
    return module, GammaRegularizer(module, torch.zeros(1, 3, H, W), resource=target)


def keras_regularizer(net, gammas, target):
    from morphscope.regularizers.keras_regularizer import KerasGammaRegularizer

    module = getattr(handbuilt, f"keras_{net}")()
    for bn, gamma in gammas.items():
        module.get_layer(bn).gamma.assign(gamma)
    return module, KerasGammaRegularizer(module, resource=target)


def analyzers_cost(net, framework, gammas, target, tmp_path):
    """The analyzers' alive cost, through a checkpoint file as the explorer reads it."""
    if framework == "torch":
        module = getattr(handbuilt, f"torch_{net}")()
        graph = load_module(module, (3, H, W))
        path = handbuilt.torch_checkpoint(module, gammas, tmp_path / "g.pt")
    else:
        module = getattr(handbuilt, f"keras_{net}")()
        graph = load_keras_model(module)
        path = handbuilt.keras_checkpoint(module, gammas, tmp_path / "g.weights.h5")
    model = compile_width_model(graph)
    return model.target_cost(morph(model, load_structure(graph, path)).widths, target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_cost_equals_the_analyzers_alive_cost(framework, net, target, tmp_path):
    build = torch_regularizer if framework == "torch" else keras_regularizer
    _, reg = build(net, NETS[net], target)
    expected = analyzers_cost(net, framework, NETS[net], target, tmp_path)
    assert reg.cost() == pytest.approx(expected, rel=1e-12)
    # And the regularizer sees fewer alive channels than the seed.
    assert reg.cost() < reg.plan.cost(reg.width_model.seed_widths)


# Residual net, FLOP target. Spaces: R (stem, u1b, u2b outputs; 13), A (u1a; 11), B (u2a; 7).
# G = io*3*S_R + io*(a_R*S_A + a_A*S_R) + io*(a_A*S_R + a_R*S_A) + io*(a_R*S_B + a_B*S_R)
#     + io*(a_B*S_R + a_R*S_B) + 2*(5*S_R)        (fc: 13 -> 5 logits, logits pinned)
# with io = 2*3*3*H*W. So dG/dS_R = io*(3 + 2*a_A + 2*a_B) + 10 and dG/dS_A = dG/dS_B = 2*io*a_R.
# dS/dgamma is 1 for the member holding the group max of that channel, 0 for the others.
IO = 2 * 3 * 3 * H * W
GRADIENT_GAMMAS = {
    "bn_stem": np.full(13, 0.5) + 0.01 * np.arange(13),  # the max of R ...
    "bn_u1b": np.full(13, 0.3),
    "bn_u2b": np.array([0.9] + [0.2] * 12),  # ... except channel 0, where u2b holds it
    "bn_u1a": np.full(11, 0.005),  # A is dead (under 1e-2): a_A = 0
    "bn_u2a": np.full(7, 0.2),  # B alive: a_B = 7
}


def expected_gradients():
    a_r, a_a, a_b = 13, 0, 7
    d_r = IO * (3 + 2 * a_a + 2 * a_b) + 10
    stem = np.full(13, d_r, dtype=float)
    stem[0] = 0.0
    u2b = np.zeros(13)
    u2b[0] = d_r
    return {"bn_stem": stem, "bn_u1b": np.zeros(13), "bn_u2b": u2b,
            "bn_u1a": np.full(11, 2.0 * IO * a_r), "bn_u2a": np.full(7, 2.0 * IO * a_r)}


def test_torch_gradient_is_what_the_formula_gives():
    module, reg = torch_regularizer("residual_net", GRADIENT_GAMMAS, "flops")
    reg.loss().backward()
    for bn, expected in expected_gradients().items():
        grad = getattr(module, bn).weight.grad.numpy()
        np.testing.assert_allclose(grad, expected, rtol=1e-6, err_msg=bn)


def test_keras_gradient_is_what_the_formula_gives():
    import tensorflow as tf

    module, reg = keras_regularizer("residual_net", GRADIENT_GAMMAS, "flops")
    names = list(expected_gradients())
    with tf.GradientTape() as tape:
        loss = reg.loss()
    grads = tape.gradient(loss, [module.get_layer(n).gamma for n in names])
    for bn, grad in zip(names, grads):
        np.testing.assert_allclose(grad.numpy(), expected_gradients()[bn], rtol=1e-6, err_msg=bn)


@pytest.mark.parametrize("target", ["flops", "size"])
@pytest.mark.parametrize("net", ["concat_net", "separable_net", "se_net"])
def test_torch_gradient_matches_finite_differences(net, target):
    import torch

    rng = np.random.default_rng(5)
    # Distinct magnitudes well away from the threshold, so alive counts and maxima hold still.
    gammas = {bn: rng.choice([-1, 1], size=len(g)) * rng.uniform(0.2, 0.9, size=len(g))
              for bn, g in NETS[net].items()}
    module, reg = torch_regularizer(net, gammas, target)
    module.double()  # float64, so a central difference of a ~1e7 loss is exact enough
    reg.loss().backward()
    eps = 1e-3
    for bn in gammas:
        weight = getattr(module, bn).weight
        for c in range(weight.numel()):
            with torch.no_grad():
                weight[c] += eps
                up = float(reg.loss())
                weight[c] -= 2 * eps
                down = float(reg.loss())
                weight[c] += eps
            assert weight.grad[c].item() == pytest.approx((up - down) / (2 * eps), rel=1e-6), (bn, c)


def test_structure_logger_writes_widths_and_cost(tmp_path):
    import json

    from morphscope.regularizers.torch_regularizer import StructureLogger

    _, reg = torch_regularizer("residual_net", NETS["residual_net"], "flops")
    logger = StructureLogger(reg, tmp_path, every=10)
    for step in range(25):
        logger.step(step, loss=1.0 / (step + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alive_0", "alive_10", "alive_20", "cost.jsonl"]
    widths = json.loads((tmp_path / "alive_10").read_text())
    assert widths["stem"] == 8 and widths["u1a"] == 0  # OR of the residual gammas; dead unit
    lines = [json.loads(line) for line in (tmp_path / "cost.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 10, 20]
    assert lines[0]["cost"] == reg.cost()


def test_keras_attach_adds_the_term_to_fit_and_the_logger_writes(tmp_path):
    import json

    from morphscope.regularizers.keras_regularizer import keras_structure_logger

    module, reg = keras_regularizer("residual_net", NETS["residual_net"], "flops")
    module.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(8, H, W, 3)).astype("float32")
    y = np.arange(8) % 5
    y_pred = module(x)
    plain = float(module.compute_loss(x, y, y_pred))
    reg.attach(module, strength=1e-7)
    regularized = float(module.compute_loss(x, y, y_pred))
    assert regularized == pytest.approx(plain + 1e-7 * float(reg.loss()), rel=1e-5)
    module.fit(x, y, batch_size=4, epochs=1, verbose=0,
               callbacks=[keras_structure_logger(reg, tmp_path, every=1)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alive_0", "alive_1", "cost.jsonl"]
    assert json.loads((tmp_path / "alive_0").read_text())["u1a"] == 0  # bn_u1a is all dead


def test_keras_group_norm_space_keeps_multiples_of_its_groups():
    from morphscope.importers.keras_importer import import_keras
    from morphscope.regularizers.keras_regularizer import KerasFlopsRegularizer

    # x(3) -> conv 3x3 (24) -> GroupNormalization(4 groups of 6) -> 1x1 (13) -> bn -> fc(5)
    keras = import_keras()
    inputs = keras.Input((H, W, 3))
    x = keras.layers.Conv2D(24, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.ReLU()(keras.layers.GroupNormalization(groups=4, name="gn_stem")(x))
    x = keras.layers.BatchNormalization(name="bn_head")(keras.layers.Conv2D(13, 1, name="head")(x))
    model = keras.Model(inputs, keras.layers.Dense(5, name="fc")(keras.layers.GlobalAveragePooling2D()(x)))
    gamma = np.full(24, 0.5, dtype=np.float32)
    gamma[[0, 1, 2, 7, 13, 19, 20]] = 0.0  # alive per group of 6: 3, 5, 5, 4
    model.get_layer("gn_stem").gamma.assign(gamma)
    reg = KerasFlopsRegularizer(model)
    space = reg.width_model.spaces.op_in["head"][0].space
    assert reg.width_model.spaces.quantum[space] == 4
    assert reg.alive_widths()[space] == 4 * 5  # every group keeps the largest count, 5
    np.testing.assert_array_equal(reg.alive_widths(), reg.plan.alive_widths(reg.gammas(), reg.threshold))


def test_keras_mixed_precision_model_gets_the_float32_loss():
    from morphscope.importers.keras_importer import import_keras
    from morphscope.regularizers.keras_regularizer import KerasGammaRegularizer

    keras = import_keras()
    _, reference = keras_regularizer("residual_net", NETS["residual_net"], "flops")
    keras.config.set_dtype_policy("mixed_float16")
    try:
        module = handbuilt.keras_residual_net()
    finally:
        keras.config.set_dtype_policy("float32")
    for bn, gamma in NETS["residual_net"].items():
        module.get_layer(bn).gamma.assign(gamma)
    loss = KerasGammaRegularizer(module).loss()
    # G is ~1e6, beyond float16's 65504: float32 whatever the layers compute in.
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    assert float(loss) == pytest.approx(float(reference.loss()), rel=1e-6) and float(loss) > 65504


def _keras_with_own_train_step(uses_compute_loss: bool):
    """The residual net as a Keras model with its own train_step (the Keras guide's pattern):
    the loss from ``self.compute_loss``, or computed directly."""
    import keras
    import tensorflow as tf

    seed = handbuilt.keras_residual_net()

    class OwnStep(keras.Model):
        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                if uses_compute_loss:
                    loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
                else:
                    loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, y_pred, from_logits=True))
            self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
            return {"loss": loss}

    model = OwnStep(seed.inputs, seed.outputs, name="own_step")
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _bn_scale_mean(model) -> float:
    return float(np.mean([np.abs(model.get_layer(n).gamma.numpy()).mean() for n in NETS["residual_net"]]))


def test_keras_own_train_step_calling_compute_loss_is_regularized():
    from morphscope.regularizers.keras_regularizer import KerasFlopsRegularizer

    x = np.random.default_rng(0).normal(size=(8, H, W, 3)).astype("float32")
    y = np.arange(8) % 5
    means = {}
    for strength in (None, 1e-5):
        import keras

        keras.utils.set_random_seed(0)
        model = _keras_with_own_train_step(uses_compute_loss=True)
        if strength:
            KerasFlopsRegularizer(model).attach(model, strength=strength)
        model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        means[strength] = _bn_scale_mean(model)
    # Without the term the scales stay near their initial 1 (mean |gamma| 0.9971 was seen when
    # attach did nothing); with the term (strength 1e-5) they fall by more than 0.05 in 4 steps.
    assert means[None] > 0.97 and means[1e-5] < means[None] - 0.05


def test_keras_own_train_step_without_compute_loss_is_refused_in_one_line():
    from morphscope.errors import MorphScopeError
    from morphscope.regularizers.keras_regularizer import KerasFlopsRegularizer

    model = _keras_with_own_train_step(uses_compute_loss=False)
    KerasFlopsRegularizer(model).attach(model, strength=1e-6)
    x = np.zeros((4, H, W, 3), "float32")
    with pytest.raises(MorphScopeError, match=r"own_step: its own train_step \(OwnStep.train_step\) never "
                                              r"calls self.compute_loss.*reg.penalty\(\)") as err:
        model.fit(x, np.zeros(4), batch_size=4, epochs=1, verbose=0)
    assert "\n" not in str(err.value)


def test_keras_target_steers_the_strength_that_the_compiled_fit_reads(tmp_path):
    import json

    from morphscope.regularizers.keras_regularizer import KerasFlopsRegularizer, keras_structure_logger

    module = handbuilt.keras_residual_net()
    reg = KerasFlopsRegularizer(module, target=0.5, adapt_every=1)
    first = reg.strength
    assert first == pytest.approx(0.1 / reg.loss_value(), rel=1e-6)  # strength x G(seed) = 0.1
    module.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    reg.attach(module)
    x = np.random.default_rng(0).normal(size=(8, H, W, 3)).astype("float32")
    y = np.arange(8) % 5
    module.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[keras_structure_logger(reg, tmp_path, every=1)])
    lines = [json.loads(line) for line in (tmp_path / "cost.jsonl").read_text().splitlines()]
    # Two batches: the seed's cost is twice the budget, so each update raises the strength by
    # exp(0.2 x 0.5) (the error clipped to 0.5), unless the lead sees the cost falling.
    assert [line["step"] for line in lines] == [0, 1]
    assert lines[0]["strength"] == pytest.approx(first * np.exp(0.1), rel=1e-6)
    assert lines[0]["budget"] == pytest.approx(lines[0]["cost"] / 2)
    # The traced step reads the variable: the loss now carries the current strength.
    y_pred = module(x)
    plain = float(module._morphscope_task_loss(x, y, y_pred))
    assert float(module.compute_loss(x, y, y_pred)) == pytest.approx(plain + reg.strength * reg.loss_value(), rel=1e-5)
    with pytest.raises(Exception, match="steers its strength to a target; attach it without strength="):
        reg.attach(module, strength=1e-7)
