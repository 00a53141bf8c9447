"""Helpers every view shares."""

from __future__ import annotations

import re
import tempfile

# Uploads are written to private temp folders (explorer/cache.py); their paths never reach the user.
_TEMP_PATH = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/morphscope_[^/\s]*/")
# CommonMark's backslash-escapable punctuation that starts markup (& starts an entity), plus
# Streamlit's own: $ (LaTeX) and : (:red[...] colours, :material/icon: icons).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$&:])")
# Where remark-gfm turns plain text into a link (http://, www., mailto:, a@b.c; it reads the text
# after escapes are resolved, so escaping cannot stop it) and where :material/ icons start:
# after every colon, between www and its dot, before an @.
_LINK_START = re.compile(r"(?<=:)|(?i:(?<=www)(?=\.))|(?=@)")
_WORD_JOINER = "\u2060"  # invisible, no width: breaks those patterns and nothing else


def user_message(err: Exception) -> str:
    """An error's one line with server temporary folders removed (the upload keeps its own name)."""
    return _TEMP_PATH.sub("", str(err))


def plain(text: str) -> str:
    """``text`` (a file, run, layer or model name, or a message quoting one) as literal text in
    anything Streamlit renders as markdown: body text, captions, headers, alerts, widget labels
    and ``help``. Markup characters are backslash-escaped, line breaks become spaces, and an
    invisible word joiner stops remark-gfm's bare-URL links and Streamlit's icons.

    >>> print(plain("[a](b.pt) *c*"))
    \\[a\\]\\(b\\.pt\\) \\*c\\*
    """
    one_line = " ".join(str(text).splitlines())
    return _MARKDOWN.sub(r"\\\1", _LINK_START.sub(_WORD_JOINER, one_line))


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
