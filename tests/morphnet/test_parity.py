"""morph-net's own unit-test numbers, reproduced in PyTorch and in Keras.

Every expected number below is morph-net's: a literal of its test, or the arithmetic its test
writes (file and test name beside each; files under ``morph_net/network_regularizers/`` and
``morph_net/testing/`` of google-research/morph-net). The networks are built from one spec
(``nets.py``), the gammas written into the live model, and the numbers read from our
regularizers (``cost()``, ``loss()``, per op) under ``convention="morph-net"`` with outputs
regularized as morph-net regularizes them (``prune_outputs="all"``).

``_coeff(op)`` of the tests is morph-net's ``flop_coeff``: 2 x output H x W x kh x kw.
"""

import numpy as np
import pytest

import nets
from nets import build, per_op_flops, per_op_terms, regularizer, value
from morphscope.analyzers.conventions import Scope

FRAMEWORKS = ["torch", "keras"]
MORPHNET = dict(convention="morph-net", scope=Scope(prune_outputs="all"))
P100_NS = 1e-9  # morph-net's latencies are FLOPs / (GFLOP/s) and bytes / (GB/s): nanoseconds


# -- flop_regularizer_test.GammaFlopLossTest: the concat model ------------------------------------

CONCAT_GAMMAS = {"conv1": [0.8] * 7 + [0.2] * 6, "conv2": [-0.7] * 11 + [0.1] * 12,
                 "conv3": [0.6] * 10 + [-0.3] * 19, "conv4": [-0.5] * 17 + [-0.4] * 14}


@pytest.fixture(scope="module", params=FRAMEWORKS)
def concat_net(request):
    model = build(request.param, nets.CONCAT_NET, nets.CONCAT_OUTPUTS)
    nets.set_gammas(request.param, model, CONCAT_GAMMAS)
    return request.param, model


def test_concat_net_costs_per_op(concat_net):
    framework, model = concat_net
    reg = regularizer(framework, model, threshold=0.45, **MORPHNET)
    costs = per_op_flops(reg, ["conv1", "conv2", "conv3", "conv4"])
    # GammaFlopLossTest.testCost: _coeff(conv) * alive_out * alive_in
    assert costs == [22610 * 7 * 3, 646 * 11 * 3, 1620 * 10 * 18, 646 * 17 * 18]
    assert reg.cost() == sum(costs)


def test_concat_net_regularization_term(concat_net):
    framework, model = concat_net
    reg = regularizer(framework, model, threshold=0.45, **MORPHNET)
    # GammaFlopLossTest.testLossDecorated: total_reg_term = 1410376.375, asserted x 0.5 with a
    # DummyDecorator scaling the regularization vectors by 0.5 (G is linear in them).
    assert 0.5 * value(reg.loss()) == pytest.approx(1410376.375 * 0.5, rel=1e-6)


def test_concat_net_default_pins_the_outputs(concat_net):
    framework, model = concat_net
    reg = regularizer(framework, model, threshold=0.45)
    # Our default keeps model outputs at full width: conv3 29 and conv4 31 (morph-net: 10, 17).
    assert per_op_flops(reg, ["conv3", "conv4"]) == [1620 * 29 * 18, 646 * 31 * 18]


def test_concat_net_latency_p100(concat_net):
    framework, model = concat_net
    reg = regularizer(framework, model, threshold=0.45, resource="latency", hardware="P100", **MORPHNET)
    from morphscope.analyzers.hardware import get_hardware
    from morphscope.analyzers.resources import get_resource

    widths = reg.alive_widths()
    latency = get_resource("latency").per_op(reg.width_model.per_op(widths),
                                             get_hardware("P100"))
    index = reg.width_model.costs.index
    per_conv = [float(latency[index[n]]) / P100_NS for n in ("conv1", "conv2", "conv3", "conv4")]
    # latency_regularizer_test.test_cost (literals)
    assert per_conv == pytest.approx([51.0548400879, 24.8907108307, 45.5409851074, 63.4480857849], rel=1e-6)
    assert per_conv[2] + per_conv[3] == pytest.approx(108.989074707, rel=1e-6)


def test_concat_net_latency_regularization_p100(concat_net):
    framework, model = concat_net
    reg = regularizer(framework, model, threshold=0.45, resource="latency", hardware="P100", **MORPHNET)
    peak, bw = 9300, 732  # resource_function.PEAK_COMPUTE / MEMORY_BANDWIDTH['P100']
    # latency_regularizer_test.testLossRegression, its formulas (reg sums 6.8, 8.9, 11.7, 14.1;
    # the concat 15.7): each op weighs its compute or memory loss, whichever its cost binds.
    conv1 = 2 * 17 * 19 * 7 * 5 * (3 * 6.8 + 7 * 0) / peak
    relu1 = (17 * 19 * 6.8 + 17 * 19 * 6.8) * 4 / bw
    conv2 = (17 * 19 * 0 + (3 * 8.9 + 11 * 0) + 17 * 19 * 8.9) * 4 / bw
    relu2 = (17 * 19 * 8.9) * 2 * 4 / bw
    concat = (17 * 19 * 15.7 + 17 * 19 * 15.7) * 4 / bw
    conv3 = (17 * 19 * 15.7 + 3 * 3 * (18 * 11.7 + 10 * 15.7) + 9 * 10 * 11.7) * 4 / bw
    relu3 = (9 * 10 * 11.7) * 2 * 4 / bw
    conv4 = (17 * 19 * 15.7 + (18 * 14.1 + 17 * 15.7) + 17 * 19 * 14.1) * 4 / bw
    relu4 = (17 * 19 * 14.1) * 2 * 4 / bw
    conv_losses = conv1 + conv2 + conv3 + conv4
    other_losses = concat + 2 * (relu1 + relu2 + relu3 + relu4)  # bn_i costs as relu_i
    terms = per_op_terms(reg, ["conv1", "conv2", "conv3", "conv4"])
    assert sum(terms) / P100_NS == pytest.approx(conv_losses, rel=1e-5)  # 172.43766
    assert value(reg.loss()) / P100_NS == pytest.approx(conv_losses + other_losses, rel=1e-5)  # 461.26717


def test_input_boundaries_select_the_regularized_bns(concat_net):
    framework, model = concat_net
    reg = regularizer(framework, model, threshold=0.45, **MORPHNET)
    graph = reg.graph
    act = {n: next(graph.nx.successors(f"{nets.torch_name(n)}_bn")) for n in ("conv3", "conv4")}

    def regularized(inputs):
        scoped = regularizer(framework, model, threshold=0.45, convention="morph-net",
                             scope=Scope(prune_outputs="all", inputs=tuple(inputs)))
        return sorted(scoped.plan.bn_names)

    bn = {n: f"{n}_bn" for n in ("conv1", "conv2", "conv3", "conv4")}
    # flop_regularizer_test: testInputBoundaryNone / testInputBoundaryConv3 / testInputBoundaryConcat
    assert sorted(reg.plan.bn_names) == [bn["conv1"], bn["conv2"], bn["conv3"], bn["conv4"]]
    assert regularized([act["conv3"]]) == [bn["conv1"], bn["conv2"], bn["conv4"]]
    concat = next(n for n, a in graph.ops() if a["kind"].value == "concat")
    assert regularized([concat]) == [bn["conv3"], bn["conv4"]]
    # testInputBoundaryConv3And4: nothing left to regularize.
    from morphscope.errors import MorphScopeError

    with pytest.raises(MorphScopeError, match="nothing to regularize"):
        regularized([act["conv3"], act["conv4"]])


# -- cost_calculator_test / add_concat_model_stub: an add between a concat and a conv ----------------

ADD_CONCAT_STUB_ALIVE = {  # add_concat_model_stub.ALIVE_STUB
    "conv1": [False, True, True, False, True, False, True],
    "conv2": [True, False, True, False, False],
    "conv3": [False, False, True, True],
    "conv4": [False, True, False, True, True, False, True, False, False, True, False, False],
    "conv5": [False, True, False],
}
ADD_CONCAT_STUB_REG = {  # add_concat_model_stub.REG_STUB
    "conv1": [0.1, 0.3, 0.6, 0.2, 0.4, 0.0, 0.8],
    "conv2": [0.15, 0.25, 0.05, 0.55, 0.45],
    "conv3": [0.07, 0.27, 0.17, 0.37],
    "conv4": [0.07, 0.27, 0.17, 0.37, 0.28, 0.32, 0.12, 0.22, 0.19, 0.11, 0.02, 0.06],
    "conv5": [0.24, 0.34, 0.29],
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_add_concat_stub_groups_each_segment_with_its_slice(framework):
    from morphscope.analyzers.morph import source_op_widths

    model = build(framework, nets.ADD_CONCAT_NET, nets.ADD_CONCAT_OUTPUTS)
    nets.set_gammas(framework, model, {k: np.where(v, 1.0, 0.0) for k, v in ADD_CONCAT_STUB_ALIVE.items()})
    reg = regularizer(framework, model, threshold=0.5, **MORPHNET)
    widths = source_op_widths(reg.graph, reg.width_model, reg.alive_widths())
    # add_concat_model_stub.expected_alive(): conv1 = (conv1 or conv4[:7]), conv2 = (conv2 or
    # conv4[7:]), conv4 = both (op_regularizer_manager_test.testSimpleOpGetRegularizer,
    # testConcatOpGetRegularizer): 5 of 7, 2 of 5, 2 of 4, 7 of 12, 1 of 3.
    expected = {"conv1": 5, "conv2": 2, "conv3": 2, "conv4": 7, "conv5": 1}
    assert {k: widths[k] for k in expected} == expected
    assert not reg.width_model.spaces.pinned[reg.width_model.spaces.op_out["conv4"][0].space]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_add_concat_stub_regularization_vectors_are_sliced_maxima(framework):
    model = build(framework, nets.ADD_CONCAT_NET, nets.ADD_CONCAT_OUTPUTS)
    nets.set_gammas(framework, model, ADD_CONCAT_STUB_REG)
    reg = regularizer(framework, model, threshold=0.5, **MORPHNET)
    # add_concat_model_stub.expected_regularization(): grouped = max(REG conv1 + conv2, REG conv4)
    grouped = np.maximum(ADD_CONCAT_STUB_REG["conv1"] + ADD_CONCAT_STUB_REG["conv2"], ADD_CONCAT_STUB_REG["conv4"])
    conv1, conv2 = per_op_terms(reg, ["conv1", "conv2"])
    # The image has no regularizer (3 alive, reg 0): G = _coeff * 3 * sum(grouped slice).
    assert conv1 == pytest.approx(22610 * 3 * grouped[:7].sum(), rel=1e-6)
    assert conv2 == pytest.approx(646 * 3 * grouped[7:].sum(), rel=1e-6)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_add_concat_image_is_not_zeroth_output(framework):
    model = build(framework, nets.ADD_CONCAT_NET, nets.ADD_CONCAT_OUTPUTS)
    nets.set_gammas(framework, model, {"conv1": [0, 1, 1, 0, 1, 0, 1],
                                       "conv4": [0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0]})
    reg = regularizer(framework, model, threshold=0.1, **MORPHNET)
    # cost_calculator_test.testImageIsNotZerothOutputOfOp: conv1_coeff * num_channels *
    # expected_alive_conv1, and "for 0/1 assignments cost and reg_term are equal".
    expected = 22610 * 3 * 5
    assert per_op_flops(reg, ["conv1"]) == [expected]
    assert per_op_terms(reg, ["conv1"]) == pytest.approx([expected], rel=1e-6)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_add_concat_gradient_reaches_every_sliced_gamma(framework):
    model = build(framework, nets.ADD_CONCAT_NET, nets.ADD_CONCAT_OUTPUTS)
    nets.set_gammas(framework, model, ADD_CONCAT_STUB_REG)
    reg = regularizer(framework, model, threshold=0.5, **MORPHNET)
    names = ["conv1", "conv2", "conv4"]
    if framework == "torch":
        reg.loss().backward()
        grads = [getattr(model, f"{n}_bn").weight.grad.numpy() for n in names]
    else:
        import tensorflow as tf

        variables = [model.get_layer(f"{n}_bn").gamma for n in names]
        with tf.GradientTape() as tape:
            loss = reg.loss()
        grads = [g.numpy() for g in tape.gradient(loss, variables)]
    # The group score of each channel is the larger of conv1/conv2's gamma and conv4's slice
    # (REG_STUB has no ties): that one member's gamma, and only it, gets the gradient.
    concat = np.array(ADD_CONCAT_STUB_REG["conv1"] + ADD_CONCAT_STUB_REG["conv2"])
    from_conv4 = np.array(ADD_CONCAT_STUB_REG["conv4"]) > concat
    assert ((grads[2] != 0) == from_conv4).all()
    assert ((np.concatenate(grads[:2]) != 0) == ~from_conv4).all()


# -- flop_regularizer_test.GammaFlopLossWithDepthwiseConvTest (and ...NoBatchNormTest) ------------

DW_GAMMAS = {"conv1": [0.8] * 7 + [0.2] * 6, "conv2": [-0.7] * 11 + [0.1] * 12,
             "conv3": [0.6] * 10 + [-0.3] * 19}
DW_BN_GAMMAS = {"dw1": [-0.3] * 1 + [-0.9] * 2, "dw2": [0.3] * 5 + [0.9] * 10 + [-0.1] * 8}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("bn", [True, False], ids=["DepthwiseConvTest", "DepthwiseConvNoBatchNormTest"])
def test_depthwise_nets(framework, bn):
    model = build(framework, nets.depthwise_net(bn), nets.DEPTHWISE_OUTPUTS)
    nets.set_gammas(framework, model, {**DW_GAMMAS, **(DW_BN_GAMMAS if bn else {})})
    reg = regularizer(framework, model, threshold=0.45, **MORPHNET)
    names = ["dw1", "conv1", "conv2", "dw2", "conv3"]
    costs = per_op_flops(reg, names)
    terms = per_op_terms(reg, ["dw1", "conv1", "conv2", "dw2"])
    dw1, dw2 = 2 * 17 * 19 * 3 * 3, 2 * 17 * 19 * 5 * 5  # _coeff of the depthwise convs
    if bn:  # ...DepthwiseConvTest.testCost / testRegularizer ('dw1' blacklisted: the image's
        # group; we pin the image, so dw1's bn has nothing to prune either)
        assert costs == [dw1 * 3, 22610 * 7 * 3, 646 * 15 * 3, dw2 * 15, 1620 * 10 * 22]
        gamma = np.maximum(np.abs(DW_BN_GAMMAS["dw2"]), np.abs(DW_GAMMAS["conv2"])).sum()  # 13.3
        expected = [0.0, 22610 * 6.8 * 3, 646 * gamma * 3, dw2 * gamma * 2]
    else:  # ...DepthwiseConvNoBatchNormTest.testCost / testRegularizer
        assert costs == [dw1 * 3, 22610 * 7 * 3, 646 * 11 * 3, dw2 * 11, 1620 * 10 * 18]
        expected = [0.0, 22610 * 6.8 * 3, 646 * 8.9 * 3, dw2 * 8.9 * 2]
    assert terms == pytest.approx(expected, rel=1e-5, abs=1e-9)


# -- flop_regularizer_test.GammaFlopResidualConnectionsLossTest ------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_residual_net(framework):
    model = build(framework, nets.RESIDUAL_NET, nets.RESIDUAL_OUTPUTS, nets.RESIDUAL_IMAGE)
    rng = np.random.default_rng(7)  # the test draws tf.random_uniform gammas; we draw our own
    sizes = {"unit_1/shortcut": 28, "unit_1/conv1": 7, "unit_1/conv2": 7, "unit_1/conv3": 28,
             "unit_2/conv1": 7, "unit_2/conv2": 7, "unit_2/conv3": 28}
    g = {k: rng.uniform(size=n).astype(np.float32) for k, n in sizes.items()}
    nets.set_gammas(framework, model, g)
    th = 0.6
    reg = regularizer(framework, model, nets.RESIDUAL_IMAGE, threshold=th, **MORPHNET)

    def alive(key):  # NumAlive: np.sum(gamma > threshold)
        return int((g[key] > np.float32(th)).sum())

    res = int(((g["unit_1/shortcut"] > th) | (g["unit_1/conv3"] > th) | (g["unit_2/conv3"] > th)).sum())
    # testCost: coeff(op) * alive_out * alive_in (coefficients: 2 x H x W x kh x kw).
    expected = {
        "unit_1/shortcut": 8 * res * 3, "unit_1/conv1": 8 * alive("unit_1/conv1") * 3,
        "unit_1/conv2": 72 * alive("unit_1/conv2") * alive("unit_1/conv1"),
        "unit_1/conv3": 8 * res * alive("unit_1/conv2"), "unit_2/conv1": 8 * alive("unit_2/conv1") * res,
        "unit_2/conv2": 18 * alive("unit_2/conv2") * alive("unit_2/conv1"),
        "unit_2/conv3": 2 * res * alive("unit_2/conv2"), "FC": 2.0 * res * 23.0,
    }
    assert dict(zip(expected, per_op_flops(reg, list(expected)))) == expected
    assert reg.cost() == sum(expected.values())


# -- flop_regularizer_test.GroupLassoFlopRegTest ----------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_group_lasso_concat_and_transposed_conv(framework):
    model = build(framework, nets.GROUP_LASSO_NET, nets.GROUP_LASSO_OUTPUTS)
    rng = np.random.default_rng(7907)  # the test's random_normal weights; ours
    kernels = {"conv1": rng.normal(size=(7, 5, 3, 13)), "conv2": rng.normal(size=(1, 1, 3, 23)),
               "convt": rng.normal(size=(7, 5, 29, 3))}  # TF layouts; convt is [kh, kw, out, in]
    for name, kernel in kernels.items():
        nets.set_kernel(framework, model, name, kernel)
    threshold = 1.0
    reg = regularizer(framework, model, family="group_lasso", threshold=threshold, **MORPHNET)

    def group_norm(weights, axis=(0, 1, 2)):  # testFlopRegularizer's own
        return np.sqrt(np.mean(weights.astype(np.float32).astype(np.float64) ** 2, axis=axis))

    r1, r2, rt = group_norm(kernels["conv1"]), group_norm(kernels["conv2"]), group_norm(kernels["convt"], (0, 1, 3))
    a1, a2, at = ((r.astype(np.float32) > np.float32(threshold)).sum() for r in (r1, r2, rt))
    coeff1, coeff2, coefft = 22610, 646, 2 * 17 * 19 * 7 * 5  # convt: the input's 17 x 19
    assert reg.cost() == 3 * (coeff1 * a1 + coeff2 * a2 + coefft * at)
    assert value(reg.loss()) == pytest.approx(3 * (coeff1 * r1.sum() + coeff2 * r2.sum() + coefft * rt.sum()), rel=1e-5)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_group_lasso_matmul(framework):
    model = build(framework, nets.MATMUL_NET, nets.MATMUL_OUTPUTS, (6,))
    w, w2 = np.arange(24).reshape((6, 4)), np.arange(21, 25).reshape((4, 1))
    nets.set_kernel(framework, model, "matmul1", w)
    nets.set_kernel(framework, model, "matmul2", w2)
    nets.set_bias(framework, model, "matmul1", np.arange(4))
    nets.set_bias(framework, model, "matmul2", [0])
    reg = regularizer(framework, model, (6,), family="group_lasso", threshold=32.0, **MORPHNET)
    rv1 = np.sqrt(np.mean(w ** 2.0, axis=0))  # group_norm(w_value, axis=(0,))
    # testFlopRegularizerWithMatMul: every norm under 32, so alive1 = alive2 = 0:
    # expected_flop_cost = 2*6*alive1 + 2*alive1*alive2 = 0, expected_reg_term = 2*6*sum(rv1).
    assert reg.cost() == 0
    assert value(reg.loss()) == pytest.approx(2 * 6 * rv1.sum(), rel=1e-6)  # 642.636


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_decorated_one_conv_nets(framework):
    # flop_regularizer_test.GammaFlopDecoratedTest: image [1, 3, 3, 3], conv1 2 x 1x1, gammas 1,
    # threshold 0.1, decorator scale 0.5: reg 54, cost 108 (_coeff 18).
    model = build(framework, nets.ONE_CONV_NET, nets.ONE_CONV_OUTPUTS, (3, 3, 3))
    nets.set_gammas(framework, model, {"conv1": [1.0, 1.0]})
    reg = regularizer(framework, model, (3, 3, 3), threshold=0.1, **MORPHNET)
    assert (0.5 * value(reg.loss()), reg.cost()) == (18 * 3 * 1, 18 * 2 * 3)
    # model_size_regularizer_test.GammaModelSizeDecoratedTest: image [1, 1, 1, 3]: loss 3, cost 6.
    model = build(framework, nets.ONE_CONV_NET, nets.ONE_CONV_OUTPUTS, (1, 1, 3))
    nets.set_gammas(framework, model, {"conv1": [1.0, 1.0]})
    reg = regularizer(framework, model, (1, 1, 3), resource="size", threshold=0.1, **MORPHNET)
    assert (0.5 * value(reg.loss()), reg.cost()) == (1 * 3 * 1, 1 * 2 * 3)
    # GroupLassoFlopDecoratedTest: the conv without bn, a kernel of ones: reg 54, cost 108.
    model = build(framework, nets.ONE_CONV_NO_BN_NET, nets.ONE_CONV_OUTPUTS, (3, 3, 3))
    nets.set_kernel(framework, model, "conv1", np.ones((1, 1, 3, 2)))
    reg = regularizer(framework, model, (3, 3, 3), family="group_lasso", threshold=0.1, **MORPHNET)
    assert (0.5 * value(reg.loss()), reg.cost()) == (18 * 3 * 1, 18 * 2 * 3)


def test_add_concat_alive_file_sets_the_slices_by_their_own_ops():
    from morphscope.analyzers.morph import morph, source_op_widths
    from morphscope.importers.checkpoints import match_alive_counts

    model = build("torch", nets.ADD_CONCAT_NET, nets.ADD_CONCAT_OUTPUTS)
    reg = regularizer("torch", model, threshold=0.5, **MORPHNET)
    # A morph-net StructureExporter file for the stub's expected_alive(): conv4 (7) is the sum
    # of its two slices, which conv1 (5) and conv2 (2) set.
    counts = {"conv1/Conv2D": 5, "conv2/Conv2D": 2, "conv3/Conv2D": 2, "conv4/Conv2D": 7, "conv5/Conv2D": 1}
    morphed = morph(reg.width_model, match_alive_counts(reg.graph, counts, "alive_0"))
    widths = source_op_widths(reg.graph, reg.width_model, morphed.widths)
    assert {k: widths[k] for k in ("conv1", "conv2", "conv3", "conv4", "conv5")} == \
        {"conv1": 5, "conv2": 2, "conv3": 2, "conv4": 7, "conv5": 1}
    assert any(note.startswith("conv4: its 2 slices") for note in morphed.notes)
