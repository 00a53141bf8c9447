"""Human-readable numbers: the one place raw counts are scaled to K, M, G."""

from __future__ import annotations

_UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def human_count(value: float, digits: int = 3) -> str:
    """``4089184256`` -> ``"4.09G"``; counts under 1000 print as integers."""
    for scale, suffix in _UNITS:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.{digits}g}"


def human_seconds(seconds: float) -> str:
    """``0.00123`` -> ``"1.23 ms"``."""
    for scale, suffix in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {suffix}"
    return f"{seconds * 1e9:.3g} ns"


def signed_percent(new: float, old: float) -> str:
    """Change from ``old`` to ``new`` as ``"-37.5%"``."""
    if not old:
        return "n/a"
    return f"{(new - old) / old * 100:+.1f}%"


def human_bytes(n_bytes: float) -> str:
    """``2 * 2**30`` -> ``"2 GB"`` (binary units: 1 GB = 2**30 bytes)."""
    for scale, suffix in ((2**40, "TB"), (2**30, "GB"), (2**20, "MB"), (2**10, "KB")):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.3g} {suffix}"
    return f"{n_bytes:.0f} bytes"
