"""Named hardware for roofline latency (DESIGN section 4).

Peak compute in GFLOP/s and memory bandwidth in GB/s, the values morph-net ships in
``morph_net/network_regularizers/resource_function.py`` (from the vendors' datasheets:
NVIDIA Tesla K80, P4, T4, P100, V100; TPUv2 from Dean, NIPS 2017 ML Systems workshop).
"""

from __future__ import annotations

from dataclasses import dataclass

from morphscope.errors import MorphScopeError


@dataclass(frozen=True)
class Hardware:
    """One device of the roofline model."""

    name: str
    peak_gflop_per_s: float  # peak compute, 1e9 floating point operations per second
    memory_gb_per_s: float  # memory bandwidth, 1e9 bytes per second


HARDWARE: dict[str, Hardware] = {
    hw.name: hw
    for hw in (
        Hardware("K80", 8740, 480),
        Hardware("P4", 5500, 192),
        Hardware("T4", 8100, 300),
        Hardware("P100", 9300, 732),
        Hardware("V100", 125000, 900),
        Hardware("TPUv2", 22500, 300),
    )
}

DEFAULT_HARDWARE = "V100"
BYTES_PER_ELEMENT = 4  # float32 activations and weights


def get_hardware(name: str) -> Hardware:
    """The :class:`Hardware` called ``name``.

    Raises
    ------
    MorphScopeError
        If ``name`` is not in :data:`HARDWARE`.
    """
    try:
        return HARDWARE[name]
    except KeyError:
        raise MorphScopeError(f"unknown hardware {name!r}; choose from {sorted(HARDWARE)}") from None
