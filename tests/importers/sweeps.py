"""Shared by the model sweeps: torch's own counts as the reference, and ours to compare.

References: ``sum(p.numel() for p in model.parameters())`` and FlopCounterMode / 2, with
torch's ``sdpa_flop_count`` added for ``aten._scaled_dot_product_flash_attention_for_cpu``
(the CPU lowering of ``F.scaled_dot_product_attention``, which FlopCounterMode does not count).
"""

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from morphscope.analyzers.cost import compile_costs, seed_costs, totals_of
from morphscope.importers.torch_importer import load_module, load_pt2


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def flop_counter_macs(model, *inputs):
    """FlopCounterMode total / 2, with CPU attention counted. Under ``no_grad`` its module
    tracker fails on some models (timm's cait, pit): those are counted with grad enabled."""
    for grad in (False, True):
        counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
        try:
            with counter, torch.set_grad_enabled(grad):
                model(*inputs)
        except (RuntimeError, AssertionError):  # the tracker asserts on some models
            if grad:
                raise
            continue
        return counter.get_total_flops() // 2


def torch_params(model):
    return sum(p.numel() for p in model.parameters())


def our_counts(model, shape, name):
    """(params, MACs, graph) from MorphScope's import of ``model`` at per-example ``shape``."""
    graph = load_module(model, tuple(shape), name=name)
    costs = compile_costs(graph)
    totals = totals_of(costs, seed_costs(costs))
    return totals["params"], totals["macs"], graph


def pt2_counts(model, example, path):
    """(params, MACs) from a ``.pt2`` of ``model`` (torch.export.save at ``example``) read back."""
    torch.export.save(torch.export.export(model, (example,)), path)
    costs = compile_costs(load_pt2(path))
    totals = totals_of(costs, seed_costs(costs))
    return totals["params"], totals["macs"]
