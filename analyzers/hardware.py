"""Hardware for latency (DESIGN section 4): named rooflines, and profiles measured on a machine.

A **named** device is a roofline: per op, ``max(flops / peak, bytes_moved / bandwidth)``, on
datasheet figures (:data:`HARDWARE`; each row names its dtype and source). morph-net's own
table (``morph_net/network_regularizers/resource_function.py``: K80, P4, T4, P100, V100,
TPUv2) is kept as it ships, so its numbers stay comparable; note that its V100 pairs the
tensor-core fp16 peak (125 TFLOP/s) with float32 bytes.

A **profile** (:func:`load_profile`, written by ``morphscope profile``) is measured: per op
class (dense conv, 1x1 conv, depthwise, grouped, linear, bn, activation, add, ...) a fitted
time per GFLOP, per GB moved and a fixed overhead per op, at the batch it was measured with:
``t_op = overhead + batch * (flops * s_per_gflop / 1e9 + bytes * s_per_gb / 1e9)``, summed over
the ops that do work. Per op it stays bilinear in the alive channels (the overhead is a
constant), so the latency regularizers train on it as they do on the roofline.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from morphscope.errors import MorphScopeError


@dataclass(frozen=True)
class ClassTimes:
    """A profile's fitted times for one op class (all finite, >= 0)."""

    s_per_gflop: float  # seconds per 1e9 floating point operations (per image)
    s_per_gb: float  # seconds per 1e9 bytes moved (per image)
    overhead_s: float  # seconds per op call, whatever its size


@dataclass(frozen=True)
class Hardware:
    """One device: a datasheet roofline, or a measured profile (``classes`` not empty)."""

    name: str
    peak_gflop_per_s: float  # peak compute, 1e9 floating point operations per second
    memory_gb_per_s: float  # memory bandwidth, 1e9 bytes per second
    dtype: str = "float32"  # the dtype the peak is for
    source: str = ""  # datasheet, or where and how a profile was measured
    classes: Mapping[str, ClassTimes] = field(default_factory=dict)  # a profile's op classes
    batch: int = 1  # a profile's batch: its latency is of one call on this many images
    measured: Mapping[str, Any] = field(default_factory=dict)  # device, threads, fit error...

    @property
    def is_profile(self) -> bool:
        return bool(self.classes)

    @property
    def prediction(self) -> str:
        """What a latency on it is: ``V100 roofline prediction, float16 tensor cores ...`` or
        ``prediction of the profile my_cpu, measured: <machine>, threads, batch, fit error``."""
        if self.is_profile:
            return f"prediction of the profile {self.name}, {self.source}"
        return f"{self.name} roofline prediction, {self.dtype}, batch 1"

    @property
    def label(self) -> str:
        """A short name for what predicts its latency: ``V100 roofline`` or ``profile my_cpu``."""
        return f"profile {self.name}" if self.is_profile else f"{self.name} roofline"

    def seconds_per(self, rate: str, classes: tuple[str, ...] = ()) -> Any:
        """Seconds per unit of ``rate``'s quantity (``peak_gflop_per_s``: one FLOP,
        ``memory_gb_per_s``: one byte): a scalar for a roofline, one value per op (of op
        ``classes``) for a profile, scaled by its batch."""
        if not self.is_profile:
            return 1.0 / (getattr(self, rate) * 1e9)
        return self._per_class(_PROFILE_RATES[rate], classes) * self.batch / 1e9

    def overhead_s(self, classes: tuple[str, ...]) -> np.ndarray:
        """A profile's fixed seconds per op call (zeros for a roofline)."""
        return self._per_class("overhead_s", classes) if self.is_profile else np.zeros(len(classes))

    def _per_class(self, column: str, classes: tuple[str, ...]) -> np.ndarray:
        """One :class:`ClassTimes` field per op; classes the profile did not time take its default."""
        fallback = self.classes[DEFAULT_CLASS]
        return np.array([getattr(self.classes.get(c, fallback), column) for c in classes], dtype=np.float64)


_PROFILE_RATES = {"peak_gflop_per_s": "s_per_gflop", "memory_gb_per_s": "s_per_gb"}
DEFAULT_CLASS = "default"  # a profile's times for op classes it did not measure

HARDWARE: dict[str, Hardware] = {
    hw.name: hw
    for hw in (
        # morph-net's table, as it ships (resource_function.py); dtypes as the datasheets give them
        Hardware("K80", 8740, 480, "float32", "morph-net; NVIDIA Tesla K80 datasheet (boost, both GPUs)"),
        Hardware("P4", 5500, 192, "float32", "morph-net; NVIDIA Tesla P4 datasheet"),
        Hardware("T4", 8100, 300, "float32", "morph-net; NVIDIA T4 datasheet"),
        Hardware("P100", 9300, 732, "float32", "morph-net; NVIDIA Tesla P100 PCIe datasheet"),
        Hardware("V100", 125000, 900, "float16 tensor cores with float32 bytes",
                 "morph-net; NVIDIA V100 SXM2 datasheet (float32: 15,700 GFLOP/s)"),
        Hardware("TPUv2", 22500, 300, "bfloat16", "morph-net; Dean, NIPS 2017 ML Systems workshop"),
        # current devices, float32 (no tensor cores) unless named
        Hardware("A100", 19500, 1555, "float32", "NVIDIA A100 40GB SXM datasheet (TF32 tensor cores: 156,000)"),
        Hardware("H100", 67000, 3350, "float32", "NVIDIA H100 SXM5 datasheet (TF32 tensor cores: 494,700 dense)"),
        Hardware("L4", 30300, 300, "float32", "NVIDIA L4 datasheet (TF32 tensor cores: 60,000 dense)"),
        Hardware("Xeon-8380", 5888, 204.8, "float32",
                 "Intel Xeon Platinum 8380: 40 cores x 2.3 GHz x 64 FLOP/cycle (2 AVX-512 FMA units x 16 "
                 "float32 lanes x 2), 8 channels DDR4-3200 x 8 bytes"),
    )
}

DEFAULT_HARDWARE = "V100"
BYTES_PER_ELEMENT = 4  # float32 activations and weights
PROFILE_FORMAT = "morphscope-latency-profile/1"
MAX_PROFILE_BYTES = 1 << 20
_MAX_SECONDS = 1e3  # a fitted time beyond this per unit or per op is no measurement


def get_hardware(name: str) -> Hardware:
    """The :class:`Hardware` called ``name``, or the profile in the ``.json`` file ``name``.

    Raises
    ------
    MorphScopeError
        If ``name`` is neither in :data:`HARDWARE` nor a readable profile file.
    """
    if isinstance(name, Hardware):
        return name
    if isinstance(name, (str, Path)) and str(name).lower().endswith(".json"):
        return load_profile(name)
    try:
        return HARDWARE[name]
    except (KeyError, TypeError):
        raise MorphScopeError(f"unknown hardware {name!r}; choose from {sorted(HARDWARE)} or a "
                              "profile .json written by morphscope profile") from None


def load_profile(path: str | Path, name: str | None = None) -> Hardware:
    """A latency profile from its JSON file (``morphscope profile --out FILE.json``), checked.

    Raises
    ------
    MorphScopeError
        One line naming the file: missing, too large, not JSON, another format, or any field
        missing, of the wrong type, negative, not finite or absurd.
    """
    name = name or str(path)
    try:
        if Path(path).stat().st_size > MAX_PROFILE_BYTES:
            raise MorphScopeError(f"{name}: over {MAX_PROFILE_BYTES:,} bytes: not a latency profile")
        data = Path(path).read_bytes()
    except OSError as err:
        raise MorphScopeError(f"{name}: cannot read the profile ({err.strerror})") from err
    return profile_from_bytes(data, name)


def profile_from_bytes(data: bytes, name: str) -> Hardware:
    """:func:`load_profile` on a file's bytes (an upload's)."""
    if len(data) > MAX_PROFILE_BYTES:
        raise MorphScopeError(f"{name}: over {MAX_PROFILE_BYTES:,} bytes: not a latency profile")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise MorphScopeError(f"{name}: not a latency profile (not JSON)") from err
    return profile_from_doc(doc, name)


def profile_from_doc(doc: Any, name: str = "profile") -> Hardware:
    """:func:`load_profile` on an already parsed document."""
    if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT:
        raise MorphScopeError(f"{name}: not a latency profile (format must be {PROFILE_FORMAT!r})")
    classes = doc.get("classes")
    if not isinstance(classes, dict) or DEFAULT_CLASS not in classes or len(classes) > 64:
        raise MorphScopeError(f"{name}: 'classes' must map op classes (at most 64, '{DEFAULT_CLASS}' "
                              "among them) to fitted times")
    times = {}
    for cls, entry in classes.items():
        if not isinstance(cls, str) or not cls.isidentifier() or not isinstance(entry, dict):
            raise MorphScopeError(f"{name}: op class {str(cls)[:40]!r} is not a name with fitted times")
        times[cls] = ClassTimes(*(_seconds(name, f"classes.{cls}.{key}", entry.get(key))
                                  for key in ("s_per_gflop", "s_per_gb", "overhead_s")))
    batch = doc.get("batch")
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 65536:
        raise MorphScopeError(f"{name}: 'batch' must be a whole number from 1 to 65536")
    label = doc.get("name")
    if not isinstance(label, str) or not _PROFILE_NAME.fullmatch(label):
        raise MorphScopeError(f"{name}: 'name' must be a text of 1 to 80 letters, digits, '.', '_' or '-'")
    # shown on pages and in charts: plain characters only (no markdown or HTML from a file)
    measured = {k: _PLAIN_TEXT.sub("", v)[:80] if isinstance(v, str) else v for k, v in doc.items()
                if k in _MEASURED_FIELDS and isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    return Hardware(label, math.inf, math.inf, str(measured.get("dtype", "float32")),
                    f"measured: {_describe(measured, batch)}", times, batch, measured)


_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_PLAIN_TEXT = re.compile(r"[^\w .,()@+:/-]")


_MEASURED_FIELDS = ("device", "framework", "threads", "dtype", "created", "mape", "points", "torch",
                   "keras", "network_scale", "network_per_op_s")


def _seconds(name: str, field_name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= _MAX_SECONDS:
        raise MorphScopeError(f"{name}: {field_name} must be a finite number of seconds from 0 to "
                              f"{_MAX_SECONDS:g}, not {str(value)[:40]}")
    return float(value)


def _describe(measured: Mapping[str, Any], batch: int) -> str:
    parts = [str(measured.get("device", "unknown device")), str(measured.get("framework", "torch"))]
    if "threads" in measured:
        parts.append(f"{measured['threads']} threads")
    parts.append(f"batch {batch}")
    if "mape" in measured:
        parts.append(f"fit error {100 * float(measured['mape']):.1f}% MAPE")
    return ", ".join(parts)


def profile_doc(name: str, classes: Mapping[str, ClassTimes], batch: int, **measured: Any) -> dict[str, Any]:
    """The JSON document of a profile (the inverse of :func:`profile_from_doc`)."""
    return {"format": PROFILE_FORMAT, "name": name, "batch": batch, **measured,
            "classes": {c: {"s_per_gflop": t.s_per_gflop, "s_per_gb": t.s_per_gb, "overhead_s": t.overhead_s}
                        for c, t in classes.items()}}
