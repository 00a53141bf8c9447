"""Helpers every view shares."""

from __future__ import annotations

import re
import tempfile

# Uploads are written to private temp folders (explorer/cache.py); their paths never reach the user.
_TEMP_PATH = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/morphscope_[^/\s]*/")


def user_message(err: Exception) -> str:
    """An error's one line with server temporary folders removed (the upload keeps its own name)."""
    return _TEMP_PATH.sub("", str(err))


def unique_labels(names: list[str]) -> list[str]:
    """``names`` with repeats told apart: ``a.pt``, ``a.pt (2)``, ``a.pt (3)``."""
    used: set[str] = set()
    out = []
    for name in names:
        label, n = name, 1
        while label in used:
            n += 1
            label = f"{name} ({n})"
        used.add(label)
        out.append(label)
    return out
