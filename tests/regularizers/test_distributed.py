"""The torch regularizer under DDP and FSDP2 (2 CPU processes, gloo), and checkpoints saved
from DDP and compiled models read back by ``morphscope report``.

One run of ``distributed_worker.py`` (both ranks, every scenario) serves all the tests here.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from morphscope.cli.main import main as morphscope_main
from workers import run_worker

WORKER = Path(__file__).with_name("distributed_worker.py")
PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    run_worker(WORKER, out)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, ranks


def test_ddp_loss_is_equal_on_every_rank_and_names_carry_no_prefix(run):
    _, ranks = run
    first, second = (r["ddp"] for r in ranks)
    # Same gammas on both ranks (DDP keeps them in sync), so the same G at every step.
    assert first["reg_losses"] == second["reg_losses"]
    assert first["after_loss"] == second["after_loss"]
    for record in (first, second):
        # Built on the plain model then wrapped, and built on the DDP wrapper: the same names.
        assert record["names_before"] == record["names_after"] == ["bn_stem", "bn_u1b", "bn_u2b",
                                                                   "bn_u1a", "bn_u2a"]
        assert not any(k.startswith(PREFIXES) for k in record["widths_keys"])
    assert first["compiled_names"] == first["names_before"]  # torch.compile wrapper: no _orig_mod.


def test_ddp_logger_built_before_the_process_group_writes_one_set_of_files_from_rank_zero(run):
    out, ranks = run
    run_dir = out / "ddp_run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["alive_0", "alive_1", "cost.jsonl"]
    lines = [json.loads(line) for line in (run_dir / "cost.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1]  # one line per step, not one per rank
    assert lines[0]["val_acc"] == 0.5 and lines[0]["target"] == "flops"
    # The strength steered to the target is the same on both ranks, and is what was logged.
    first, second = (r["ddp"]["strengths"] for r in ranks)
    assert first == second and [line["strength"] for line in lines] == first
    assert first[0] != 1e-7  # the first update moved it (the seed's cost is above the budget)
    assert not any(k.startswith(PREFIXES) for k in json.loads((run_dir / "alive_1").read_text()))


def test_fsdp2_loss_and_gradients_equal_the_single_process_values(run):
    _, ranks = run
    for record in (r["fsdp2"] for r in ranks):
        # bn_stem's 13 gammas really are sharded (7 + 6), yet every rank sees the whole G.
        assert record["local_gamma_channels"] < 13
        assert record["loss"] == pytest.approx(record["single_loss"], rel=1e-6)
        assert record["after_loss"] == pytest.approx(record["single_loss"], rel=1e-6)
        assert record["cost"] == record["single_cost"]
        assert record["train_loss_finite"]
        # A strength steered to a target: the first update, from the gathered gammas, is the
        # single process's on every rank.
        assert record["strength"] == pytest.approx(record["single_strength"], rel=1e-9)
        for bn, grad in record["single_grads"].items():
            np.testing.assert_allclose(record["grads"][bn], grad, rtol=1e-6, err_msg=bn)
    assert [r["fsdp2"]["local_gamma_channels"] for r in ranks] == [7, 6]


def test_fsdp2_sharded_model_without_graph_is_refused_with_the_way_out(run):
    _, ranks = run
    assert "build the regularizer before fully_shard, or pass graph=" in ranks[0]["fsdp2"]["after_error"]


@pytest.mark.parametrize("checkpoint", ["ddp_state.pt", "compiled_state.pt"])
def test_checkpoints_of_ddp_and_compiled_models_go_through_morphscope_report(run, checkpoint, capsys):
    out, ranks = run
    state = __import__("torch").load(out / checkpoint, weights_only=True)
    prefix = "module." if checkpoint.startswith("ddp") else "_orig_mod."
    assert all(k.startswith(prefix) for k in state)  # the wrapper's own keys, as saved
    assert morphscope_main(["report", str(out / "residual.pt2"), "--checkpoint",
                            str(out / checkpoint), "--json"]) == 0
    morphed = json.loads(capsys.readouterr().out)["morphed"][0]
    # The regularizer's alive FLOPs after training, on the same weights.
    assert morphed["flops"] == ranks[0]["ddp"]["cost"]
    assert not any(k.startswith(PREFIXES) for k in morphed["widths"])
