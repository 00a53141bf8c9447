"""Two CPU processes (gloo) exercising the torch regularizer under DDP and FSDP2.

Run by ``test_distributed.py`` as ``python distributed_worker.py OUT_DIR``; each rank writes
``OUT_DIR/rank<r>.json`` with what it saw, rank 0 also the checkpoints and the logger's files.
Not a test module itself (pytest collects ``test_*.py`` only).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for handbuilt

import handbuilt  # noqa: E402
from morphscope.errors import MorphScopeError  # noqa: E402
from morphscope.regularizers.torch_regularizer import FlopsRegularizer, StructureLogger  # noqa: E402

EXAMPLE = torch.zeros(1, 3, handbuilt.H, handbuilt.W)
STRENGTH = 1e-7


def fresh_model() -> torch.nn.Module:
    """The residual net with trained-looking gammas, identical on every rank (seeded)."""
    torch.manual_seed(0)
    model = handbuilt.torch_residual_net()
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                gamma = rng.uniform(0.05, 1.0, module.num_features) * (rng.random(module.num_features) > 0.3)
                module.weight.copy_(torch.as_tensor(gamma, dtype=torch.float32))
    return model


def batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(10 + rank)
    return (torch.randn(4, 3, handbuilt.H, handbuilt.W, generator=generator),
            torch.randint(0, 5, (4,), generator=generator))


def gamma_grads(model: torch.nn.Module, names: tuple[str, ...]) -> dict[str, list[float]]:
    out = {}
    for name in names:
        grad = model.get_submodule(name).weight.grad
        grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
        out[name] = grad.tolist()
    return out


def early_logger(out: Path) -> tuple[torch.nn.Module, FlopsRegularizer, StructureLogger]:
    """A model, its regularizer steered to half the seed's FLOPs, and its logger, all built
    before the process group exists (as Lightning and the HF Trainer build callbacks)."""
    model = fresh_model()
    before = FlopsRegularizer(model, EXAMPLE, target=0.5, strength=STRENGTH, adapt_every=1)
    return model, before, StructureLogger(before, out / "ddp_run", every=1)


def run_ddp(rank: int, out: Path, record: dict, model, before, logger) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(model)  # the regularizer was built on the plain model
    after = FlopsRegularizer(ddp, EXAMPLE)  # built on the wrapper
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    losses, strengths = [], []
    for step in range(2):
        x, y = batch(rank)
        reg_loss = before.loss()
        loss = F.cross_entropy(ddp(x), y) + before.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(reg_loss.item())
        logger.step(step, loss=float(loss), metrics={"val_acc": 0.5})
        strengths.append(before.strength)
    record["ddp"] = {"reg_losses": losses, "strengths": strengths, "after_loss": float(after.loss()),
                     "names_before": list(before.plan.bn_names), "names_after": list(after.plan.bn_names),
                     "widths_keys": sorted(json.loads(after.widths_json())), "cost": before.cost()}
    if rank == 0:
        torch.save(ddp.state_dict(), out / "ddp_state.pt")
        compiled = torch.compile(model)  # never called: only its state_dict's `_orig_mod.` keys
        torch.save(compiled.state_dict(), out / "compiled_state.pt")
        record["ddp"]["compiled_names"] = list(FlopsRegularizer(compiled, EXAMPLE).plan.bn_names)
        torch.export.save(torch.export.export(handbuilt.torch_residual_net().eval(), (EXAMPLE,)),
                          out / "residual.pt2")


def run_fsdp2(rank: int, record: dict) -> None:
    from torch.distributed.fsdp import fully_shard

    reference = fresh_model()
    single = FlopsRegularizer(reference, EXAMPLE)
    single.loss().backward()
    model = fresh_model()
    before = FlopsRegularizer(model, EXAMPLE)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
            fully_shard(module)
    fully_shard(model)
    local = model.bn_stem.weight.to_local().numel()
    try:
        FlopsRegularizer(model, EXAMPLE)
        after_error = None
    except MorphScopeError as err:
        after_error = str(err)
    after_loss = float(FlopsRegularizer(model, graph=before.graph).loss())  # built after sharding
    steered = FlopsRegularizer(model, graph=before.graph, target=0.5, adapt_every=1)  # gathers: collective
    single_steered = FlopsRegularizer(fresh_model(), EXAMPLE, target=0.5, adapt_every=1)
    loss = before.loss()
    loss.backward()
    x, y = batch(rank)
    train_loss = F.cross_entropy(model(x), y) + STRENGTH * before.loss()
    train_loss.backward()
    record["fsdp2"] = {"single_loss": float(single.loss()), "loss": float(loss), "after_loss": after_loss,
                       "strength": steered.adapt(0), "single_strength": single_steered.adapt(0),
                       "after_error": after_error, "local_gamma_channels": local,
                       "single_cost": single.cost(), "cost": before.cost(),
                       "single_grads": gamma_grads(reference, single.plan.bn_names),
                       "train_loss_finite": bool(torch.isfinite(train_loss))}
    model.zero_grad()
    before.loss().backward()
    record["fsdp2"]["grads"] = gamma_grads(model, before.plan.bn_names)


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    out_dir, record = Path(out), {"rank": rank}
    model, regularizer, logger = early_logger(out_dir)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        run_ddp(rank, out_dir, record, model, regularizer, logger)
        run_fsdp2(rank, record)
    finally:
        (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(worker, args=(2, free_port(), sys.argv[1]), nprocs=2)
