"""The framework-neutral half of the MorphNet regularizers: coefficients from the analyzers.

The regularizer of the paper (DESIGN section 7), for an op whose cost is bilinear,
``io*a_in*a_out + i*a_in + o*a_out``::

    G_op = io * (a_in * S_out + a_out * S_in) + i * S_in + o * S_out

where ``a`` are alive channel counts now (constants) and ``S`` the sums over channels of the
group score max |gamma| (differentiable). Depthwise convs (cost ``o*a``, input and output one
group) get ``o * (S_in + S_out)``. Everything comes from :mod:`analyzers` (the same cost rules,
spaces and groups), so ``cost()`` here is the analyzers' alive cost by construction.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from morphscope.analyzers.alive import alive_widths, gamma_masks
from morphscope.analyzers.cost import bilinear
from morphscope.analyzers.hardware import DEFAULT_HARDWARE, Hardware, get_hardware
from morphscope.analyzers.widths import WidthModel, check_target
from morphscope.graph import ChannelGraph, Kind


@dataclass(frozen=True)
class RegularizerPlan:
    """Arrays the framework halves evaluate on live tensors.

    coeff_out / coeff_in : (n_ops, 4) bilinear coefficients such that
        ``G = sum(bilinear(coeff_out, a_in, S_out) + bilinear(coeff_in, S_in, a_out))``.
    members : per regularized space, ``[(bn op, offset)]`` of its bn scales.
    """

    model: WidthModel
    target: str
    hardware: Hardware
    members: dict[int, list[tuple[str, int]]]
    depthwise: np.ndarray

    def coefficients(self, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(coeff_out, coeff_in)`` for the current alive widths (latency picks, per op,
        the roofline branch that binds at these widths)."""
        io_i_o = self._resource_coeffs(widths)
        io, i, o = io_i_o[:, 0], io_i_o[:, 1], io_i_o[:, 2]
        zero = np.zeros_like(io)
        i_eff = np.where(self.depthwise, o, i)  # depthwise: o * (S_in + S_out)
        coeff_out = np.stack([io, zero, o, zero], axis=1)
        coeff_in = np.stack([io, i_eff, zero, zero], axis=1)
        return coeff_out, coeff_in

    def _resource_coeffs(self, widths: np.ndarray) -> np.ndarray:
        coeffs = self.model.costs.coeffs
        if self.target == "flops":
            return 2.0 * coeffs["macs"]
        if self.target in ("size", "params"):
            return coeffs[self.target]
        compute = 2.0 * coeffs["macs"] / (self.hardware.peak_gflop_per_s * 1e9)
        memory = coeffs["bytes_moved"] / (self.hardware.memory_gb_per_s * 1e9)
        per_op = self.model.per_op(widths)
        compute_bound = (2.0 * per_op["macs"] / (self.hardware.peak_gflop_per_s * 1e9)
                         >= per_op["bytes_moved"] / (self.hardware.memory_gb_per_s * 1e9))
        return np.where(compute_bound[:, None], compute, memory)

    def alive_widths(self, gammas: dict[str, np.ndarray], threshold: float) -> np.ndarray:
        """Alive widths for the current gammas (the analyzers' rule)."""
        return alive_widths(gamma_masks(self.model.spaces, gammas,
                                        threshold))

    def value(self, group_sums: Any, widths: np.ndarray, to_tensor: Callable[[np.ndarray], Any],
              matmul: Callable[[Any, Any], Any] = operator.matmul) -> Any:
        """G per op, for either framework: ``group_sums`` (one differentiable S per space),
        ``to_tensor`` (numpy -> that framework's tensor) and its ``matmul`` are all that
        differs; the caller sums."""
        coeff_out, coeff_in = (to_tensor(c) for c in self.coefficients(widths))
        m_in, m_out, alive = to_tensor(self.model.m_in), to_tensor(self.model.m_out), to_tensor(widths)
        a_in, a_out = matmul(m_in, alive), matmul(m_out, alive)
        s_in, s_out = matmul(m_in, group_sums), matmul(m_out, group_sums)
        return bilinear(coeff_out, a_in, s_out) + bilinear(coeff_in, s_in, a_out)

    def cost(self, widths: np.ndarray) -> float:
        """The alive cost of the target resource (FLOPs, params, size or latency seconds)."""
        return float(self.model.target_cost(widths, self.target, self.hardware))


def regularizer_plan(graph: ChannelGraph, model: WidthModel, target: str,
                     hardware: str | Hardware = DEFAULT_HARDWARE) -> RegularizerPlan:
    """Which bn scales regularize which space, and the per-op coefficients' source."""
    check_target(target)
    hw = hardware if isinstance(hardware, Hardware) else get_hardware(hardware)
    spaces = model.spaces
    members = {s: cover for s, cover in spaces.bn_cover.items() if not spaces.pinned[s]}
    depthwise = np.array([graph[n]["kind"] == Kind.CONV and 1 < graph[n].get("groups", 1)
                          == graph[n].get("in_channels") for n in model.costs.names])
    return RegularizerPlan(model, target, hw, members, depthwise)

