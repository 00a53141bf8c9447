"""MorphNet analysis on hand-built networks, every expected number written out as arithmetic.

Each network is built in PyTorch and in Keras with the same layer names; gammas are written to
a real checkpoint file of each framework and read back, so both importers, both checkpoint
readers and the analyzers are checked against the same hand arithmetic.
"""

import numpy as np
import pytest

import handbuilt
from morphscope.analyzers.alive import consistency_report, topology_report
from morphscope.analyzers.morph import export_plan, morph, plan_totals, source_op_widths
from morphscope.analyzers.widths import apply_multiplier, compile_width_model
from handbuilt import H, W, alive_at
from morphscope.importers.checkpoints import load_structure
from morphscope.importers.keras_importer import load_keras_model
from morphscope.importers.torch_importer import load_module

FRAMEWORKS = ["torch", "keras"]


def analyze(net, framework, gammas, tmp_path, threshold=1e-2):
    if framework == "torch":
        module = getattr(handbuilt, f"torch_{net}")()
        graph = load_module(module, (3, H, W), name=net)
        path = handbuilt.torch_checkpoint(module, gammas, tmp_path / f"{net}.pt")
    else:
        module = getattr(handbuilt, f"keras_{net}")()
        graph = load_keras_model(module)
        path = handbuilt.keras_checkpoint(module, gammas, tmp_path / f"{net}.weights.h5")
    model = compile_width_model(graph)
    structure = load_structure(graph, path)
    return graph, model, structure, morph(model, structure, threshold), module


def macs_of(graph, model, widths):
    per_op = model.per_op(widths)["macs"]
    return {n: int(round(per_op[model.costs.index[n]]))
            for n in source_op_widths(graph, model, widths)}


def test_two_inputs_three_outputs_costs_six_then_four():
    from torch import nn

    from morphscope.importers.checkpoints import match_gammas

    # 2 inputs -> 3 outputs (bn) -> 5 logits; the logits are pinned (model output).
    graph = load_module(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 5)), (2,),
                        name="tiny")
    model = compile_width_model(graph)
    first = model.costs.index["0"]
    assert model.per_op(model.seed_widths)["macs"][first] == 2 * 3
    structure = match_gammas(graph, {"1.weight": np.array([0.7, 0.0, 0.9])}, "tiny.pt")
    # The second output's gamma is zero: 2 inputs x 2 alive outputs, then 2 x 5.
    widths = morph(model, structure).widths
    assert model.per_op(widths)["macs"][first] == 2 * 2
    assert model.totals(widths)["macs"] == 2 * 2 + 2 * 5


def test_width_factor_one_and_a_half():
    graph = load_module(handbuilt.torch_concat_net(), (3, H, W))
    spaces = compile_width_model(graph).spaces
    # Pick two prunable spaces and pretend they shrank to 10 and 80 channels.
    widths = spaces.sizes.astype(float)
    free = [int(s) for s in np.flatnonzero(~spaces.pinned)][:2]
    widths[free] = [10, 80]
    grown = apply_multiplier(spaces, widths, 1.5)
    assert grown[free].tolist() == [15, 120]  # floor(1.5*10), floor(1.5*80)
    assert (grown[spaces.pinned] == widths[spaces.pinned]).all()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_concat_feeds_the_sum_of_alive_branch_outputs(framework, tmp_path):
    gammas = {"bn_stem": alive_at(13, range(13)),
              "bn_a": alive_at(23, range(10, 23)),  # 13 of 23 alive
              "bn_b": alive_at(7, [0, 3, 4, 5, 6]),  # 5 of 7 alive
              "bn_head": alive_at(29, range(11))}  # 11 of 29 alive
    graph, model, _, morphed, _ = analyze("concat_net", framework, gammas, tmp_path)
    widths = source_op_widths(graph, model, morphed.widths)
    assert (widths["branch_a"], widths["branch_b"], widths["head"]) == (13, 5, 11)
    macs = macs_of(graph, model, morphed.widths)
    assert macs["head"] == 1 * 1 * H * W * (13 + 5) * 11  # head reads both branches' alive
    assert macs["branch_b"] == 3 * 3 * H * W * 13 * 5
    assert macs["fc"] == 11 * 5


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_residual_stage_shares_one_alive_vector(framework, tmp_path):
    gammas = {"bn_stem": alive_at(13, [0, 1, 2, 3, 4]),
              "bn_u1b": alive_at(13, [3, 4, 5, 6]),
              "bn_u2b": alive_at(13, [3, 6, 7]),
              "bn_u1a": alive_at(11, range(11)),
              "bn_u2a": alive_at(7, [0, 2, 4])}
    graph, model, structure, morphed, _ = analyze("residual_net", framework, gammas, tmp_path)
    widths = source_op_widths(graph, model, morphed.widths)
    # The shortcut (stem) and both units' last convs: OR of {0-4}, {3-6}, {3,6,7} = {0..7}.
    assert widths["stem"] == widths["u1b"] == widths["u2b"] == 8
    stem_space = model.spaces.op_out["stem"][0].space
    assert np.flatnonzero(morphed.masks[stem_space]).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    # Channels some bn keeps and another drops: all of 0..7 except 3 (alive in all three).
    [group] = consistency_report(model.spaces, structure.gammas)
    assert group.broken == (0, 1, 2, 4, 5, 6, 7)
    assert set(group.members) == {"bn_stem", "bn_u1b", "bn_u2b"}
    macs = macs_of(graph, model, morphed.widths)
    assert macs["u1a"] == 3 * 3 * H * W * 8 * 11
    assert macs["u2a"] == 3 * 3 * H * W * 8 * 3
    assert macs["u2b"] == 3 * 3 * H * W * 3 * 8


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_squeeze_excitation_gate_follows_the_feature_map(framework, tmp_path):
    gammas = {"bn_stem": alive_at(13, range(9)), "bn_head": alive_at(23, range(23))}
    graph, model, _, morphed, _ = analyze("se_net", framework, gammas, tmp_path)
    widths = source_op_widths(graph, model, morphed.widths)
    assert widths["se_fc2"] == widths["stem"] == 9  # the gate is tied to the gated map
    assert widths["se_fc1"] == 7  # no bn: full width
    macs = macs_of(graph, model, morphed.widths)
    assert macs["se_fc1"] == 9 * 7  # 1x1 conv on a 1x1 map: pooled alive channels x 7
    assert macs["se_fc2"] == 7 * 9
    assert macs["head"] == H * W * 9 * 23


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_depthwise_separable_block(framework, tmp_path):
    # The bn after the depthwise conv scales the same channels as the stem's bn (one group).
    gammas = {"bn_stem": alive_at(13, range(6)), "bn_dw": alive_at(13, range(4, 10)),
              "bn_pw": alive_at(23, range(17))}
    graph, model, _, morphed, _ = analyze("separable_net", framework, gammas, tmp_path)
    widths = source_op_widths(graph, model, morphed.widths)
    assert widths["stem"] == 10  # OR of {0..5} and {4..9}
    assert widths["pw"] == 17
    macs = macs_of(graph, model, morphed.widths)
    dw_macs = int(round(model.per_op(morphed.widths)["macs"][model.costs.index["dw"]]))
    assert dw_macs == 3 * 3 * H * W * 10  # kh*kw*H*W*alive
    assert macs["pw"] == H * W * 10 * 17
    assert macs["stem"] == 3 * 3 * H * W * 3 * 10


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dead_residual_branch_is_removable_and_removed(framework, tmp_path):
    gammas = {"bn_stem": alive_at(13, range(13)), "bn_u1b": alive_at(13, range(13)),
              "bn_u2b": alive_at(13, range(13)), "bn_u1a": alive_at(11, []),  # u1 is dead
              "bn_u2a": alive_at(7, range(7))}
    graph, model, structure, morphed, module = analyze("residual_net", framework, gammas, tmp_path)
    topology = topology_report(graph, model.spaces, morphed.widths, structure.gammas)
    [(add, branch_end, reason)] = topology.removable_blocks
    assert branch_end.endswith("bn_u1b") and "u1a" in reason
    assert "u1a" in topology.zero_width

    plan = export_plan(graph, model, morphed, gammas=structure.gammas)
    assert {"u1a", "bn_u1a", "u1b", "bn_u1b"} <= set(plan.removed_ops)
    predicted = plan_totals(model, plan)
    # What remains: stem, unit 2 and fc at full width.
    assert predicted["macs"] == 3 * 3 * H * W * (3 * 13 + 13 * 7 + 7 * 13) + 13 * 5
    from morphscope.exporters import rebuild

    if framework == "torch":
        import torch

        new = rebuild.rebuild_torch(module, graph, model, plan)
        assert rebuild.count_torch_params(new) == predicted["params"]
        assert new(torch.zeros(2, 3, H, W)).shape == (2, 5)
        rebuilt = load_module(new, (3, H, W))
    else:
        new = rebuild.rebuild_keras(module, graph, model, plan)
        assert new.count_params() == predicted["params"]
        assert tuple(new(np.zeros((2, H, W, 3), dtype="float32")).shape) == (2, 5)
        rebuilt = load_keras_model(new)
    rebuilt_model = compile_width_model(rebuilt)
    assert rebuilt_model.totals(rebuilt_model.seed_widths)["macs"] == predicted["macs"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_rebuilt_model_matches_prediction_and_copies_alive_weights(framework, tmp_path):
    gammas = {"bn_stem": alive_at(13, range(6)), "bn_dw": alive_at(13, range(4, 10)),
              "bn_pw": alive_at(23, range(17))}
    graph, model, structure, morphed, module = analyze("separable_net", framework, gammas, tmp_path)
    plan = export_plan(graph, model, morphed, gammas=structure.gammas)
    from morphscope.exporters import rebuild

    predicted = plan_totals(model, plan)["params"]
    if framework == "torch":
        new = rebuild.rebuild_torch(module, graph, model, plan, morphed.masks)
        assert rebuild.count_torch_params(new) == predicted
        # The pointwise conv keeps the stem group's alive inputs 0..9 and outputs 0..16.
        assert (new.pw.weight.detach().numpy() == module.pw.weight.detach().numpy()[:17, :10]).all()
    else:
        new = rebuild.rebuild_keras(module, graph, model, plan, morphed.masks)
        assert new.count_params() == predicted
        old_kernel = module.get_layer("pw").get_weights()[0]  # (1, 1, in, out)
        np.testing.assert_array_equal(new.get_layer("pw").get_weights()[0], old_kernel[:, :, :10, :17])
        old_dw = module.get_layer("dw").get_weights()[0]  # (3, 3, channels, 1)
        np.testing.assert_array_equal(new.get_layer("dw").get_weights()[0], old_dw[:, :, :10, :])
