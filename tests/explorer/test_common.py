"""Helpers every view shares: names shown as literal text (issue 26), and a check that the views
pass every name they show through that helper."""

import ast
import re
from pathlib import Path

import pytest

from morphscope.explorer.views.common import plain

ROOT = Path(__file__).resolve().parents[2]
WJ = "\u2060"  # word joiner: invisible, breaks remark-gfm's bare-URL links and :material/ icons


def test_plain_escapes_markdown_latex_colours_and_html():
    hostile = "![p](http://h/x.png) [a](http://h) <img src=x onerror=alert(1)> *b* $x$ :red[c]"
    shown = plain(hostile)
    assert shown == (r"\!\[p\]\(http\:" + WJ + r"//h/x\.png\) \[a\]\(http\:" + WJ + r"//h\) "
                     r"\<img src=x onerror=alert\(1\)\> \*b\* \$x\$ \:" + WJ + r"red\[c\]")
    assert re.findall(r"(?<!\\)[][()<>!*$]", shown) == []  # every markup character escaped
    assert "](" not in shown and "://" not in shown


def test_plain_breaks_bare_links_and_keeps_one_line():
    assert plain("www.h.io a@h.io") == "www" + WJ + r"\.h\.io a" + WJ + r"@h\.io"
    assert plain("run\n# title\r\n---") == r"run \# title \-\-\-"
    assert plain("sweep/a_1 (2)") == r"sweep/a\_1 \(2\)"


# Streamlit calls whose text (first argument, label= or help=) is rendered as markdown.
MARKDOWN_CALLS = {"markdown", "caption", "write", "info", "warning", "error", "success", "subheader",
                  "header", "title", "metric", "select_slider", "selectbox", "multiselect", "checkbox",
                  "toggle", "radio", "button", "download_button", "expander", "text_input", "text_area",
                  "number_input", "slider", "file_uploader", "spinner", "toast", "popover"}
TEXT_KEYWORDS = {"label", "body", "help"}
MARKDOWN_OPTIONS = {"radio", "select_slider"}  # their options render as markdown too (selectbox's do not)
# Texts known to hold no name: the importer's framework word, the input shape's ints, the bundled
# example's committed numbers, the timing's ints, a Match button's resource word, the cost cards'
# fixed titles, the seed report's convention sentence, fixed choices and a run's step numbers.
KNOWN_SAFE = {"graph.framework", "'x'.join(map(str, graph.input_shape))", "runs", "doc['epochs']",
              "doc['workers']", "result['threads']", "result['batch']", "target", "card",
              "doc['convention']", "SOURCES", "THRESHOLDS", "list(run.steps)"}
COUNTS = ("len(", "sum(")
NUMERIC_SPEC = ("d", "f", "e", "g", "%", ",")


def _is_plain_call(node):
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "plain"


def _unsafe_parts(node):
    """Source of each part of a shown text that may carry a name without going through plain()."""
    if isinstance(node, ast.Constant) or _is_plain_call(node):
        return []
    if isinstance(node, ast.IfExp):
        return _unsafe_parts(node.body) + _unsafe_parts(node.orelse)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _unsafe_parts(node.left) + _unsafe_parts(node.right)
    if isinstance(node, ast.JoinedStr):
        return [part for value in node.values for part in _unsafe_parts(value)]
    if isinstance(node, ast.FormattedValue):
        spec = "".join(v.value for v in node.format_spec.values if isinstance(v, ast.Constant)) \
            if node.format_spec else ""
        if spec.endswith(NUMERIC_SPEC) or ast.unparse(node.value).startswith(COUNTS):
            return []
        return _unsafe_parts(node.value)
    source = ast.unparse(node)
    return [] if source in KNOWN_SAFE else [source]


def _shown_texts(tree):
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) \
                and call.func.attr in MARKDOWN_CALLS:
            yield from call.args[:1]
            yield from (k.value for k in call.keywords if k.arg in TEXT_KEYWORDS)
            if call.func.attr in MARKDOWN_OPTIONS:
                yield from call.args[1:2]
                yield from (k.value for k in call.keywords if k.arg == "options")


def unplain_texts(source):
    tree = ast.parse(source)
    return [(text.lineno, part) for text in _shown_texts(tree) for part in _unsafe_parts(text)]


@pytest.mark.parametrize("path", sorted((ROOT / "explorer" / "views").glob("*.py")) + [ROOT / "app.py"],
                         ids=lambda p: p.name)
def test_views_show_names_only_through_plain(path):
    assert unplain_texts(path.read_text()) == []


def test_the_check_finds_an_unwrapped_name():
    source = ("st.caption(f'{graph.name}: {len(graph)} ops')\n"
              "st.sidebar.error(user_message(err))\n"
              "st.caption(f'{plain(graph.name)}: {share:.1f}%', help=f'{run.name} step')\n"
              "st.radio('Run', [run.name for run in runs])\n")
    assert unplain_texts(source) == [(1, "graph.name"), (2, "user_message(err)"), (3, "run.name"),
                                     (4, "[run.name for run in runs]")]
