"""The Hugging Face Trainer and Lightning callbacks under DDP (2 CPU processes, gloo): the term
is added, the strength steered to a target is the same on both ranks, one set of files is
written; and Lightning's ``.ckpt`` reads as a checkpoint of the inner network.

One run of ``trainer_worker.py`` per framework serves the tests of that framework.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import handbuilt
from morphscope.api import load_structure

WORKER = Path(__file__).with_name("trainer_worker.py")
STEPS = 4  # the worker's max_steps: 16 samples, 2 per device, 2 processes, 1 epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
          "--master-port", str(_free_port()), str(WORKER), "hf", str(out)])
    return out, [json.loads((out / f"hf_rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def lightning(tmp_path_factory):
    out = tmp_path_factory.mktemp("lightning")
    _run([sys.executable, str(WORKER), "lightning", str(out)])
    return out, [json.loads((out / f"lightning_rank{r}.json").read_text()) for r in (0, 1)]


def _check_one_run(out: Path, mode: str, ranks: list[dict]) -> None:
    run_dir = out / f"{mode}_run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["alive_1", "alive_2", "alive_3", "alive_4", "cost.jsonl"]
    lines = [json.loads(line) for line in (run_dir / "cost.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]  # optimizer steps, each once
    assert all(r["world"] == 2 for r in ranks)  # really two processes
    first, second = (r["strengths"] for r in ranks)
    assert first == second == [line["strength"] for line in lines]  # one strength on every rank
    assert first[0] != 1e-6  # steered from the worker's start (1e-6)
    # The logged loss carries the term: cross entropy over 5 classes starts near ln 5 = 1.6,
    # strength x G(seed) (every gamma 1 at the start) is 1e-6 x ~5e6 on top of it.
    assert lines[0]["loss"] > 3.0
    # Budget: half the residual net's seed FLOPs, the cost the analyzers count.
    assert lines[0]["budget"] == pytest.approx(lines[0]["cost"] / 2)
    assert ranks[0]["end"] == ranks[1]["end"] != ranks[0]["start"]  # DDP kept the ranks equal


def test_hf_trainer_callback_adds_the_term_and_writes_one_set_of_files(hf):
    out, ranks = hf
    _check_one_run(out, "hf", ranks)


def test_lightning_callback_adds_the_term_and_writes_one_set_of_files(lightning):
    out, ranks = lightning
    _check_one_run(out, "lightning", ranks)


def test_lightning_checkpoint_reads_as_the_inner_network(lightning):
    out, ranks = lightning
    keys = torch.load(out / "last.ckpt", weights_only=True)["state_dict"]
    assert all(k.startswith("model.") for k in keys)  # what Lightning saves for self.model
    structure = load_structure(handbuilt.torch_residual_net(), out / "last.ckpt",
                               example_input=torch.zeros(1, 3, handbuilt.H, handbuilt.W))
    assert sorted(structure.gammas) == ["bn_stem", "bn_u1a", "bn_u1b", "bn_u2a", "bn_u2b"]
    # The gammas Lightning saved are the trained ones rank 0 recorded (module order).
    saved = np.concatenate([structure.gammas[n] for n in ("bn_stem", "bn_u1a", "bn_u1b", "bn_u2a", "bn_u2b")])
    np.testing.assert_allclose(saved, ranks[0]["end"], rtol=0, atol=0)
