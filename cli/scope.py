"""The CLI's counting-convention and analysed-scope options (shared by every command)."""

from __future__ import annotations

import argparse
from typing import Any

from morphscope.analyzers.conventions import CONVENTIONS, DEFAULT_CONVENTION, PRUNE_OUTPUTS, Scope


def scope_arguments(parser: argparse.ArgumentParser) -> None:
    """``--convention``, ``--prune-outputs`` and the analysed part's boundaries and patterns."""
    parser.add_argument("--convention", default=DEFAULT_CONVENTION, choices=list(CONVENTIONS),
                        help="count as the hardware does (physical, default) or exactly as "
                        "morph-net does (morph-net); see the README's morph-net conventions")
    parser.add_argument("--prune-outputs", default="none", choices=PRUNE_OUTPUTS,
                        help="model outputs that may be pruned: none (default), feature-maps "
                        "(outputs with spatial dimensions, e.g. a backbone's maps; logits kept) "
                        "or all (morph-net)")
    parser.add_argument("--input-boundary", action="append", default=[], metavar="OP",
                        help="analyse only what lies after this op (morph-net's input_boundary); repeatable")
    parser.add_argument("--output-boundary", action="append", default=[], metavar="OP",
                        help="analyse only what these ops depend on (morph-net's output_boundary, "
                        "e.g. a detector's backbone end); repeatable")
    parser.add_argument("--include", action="append", default=[], metavar="REGEX",
                        help="analyse only ops whose name matches; repeatable. Everything else "
                        "keeps its width, and its cost still counts")


def scope_of(args: argparse.Namespace) -> Scope:
    """The :class:`Scope` the options describe."""
    return Scope(args.prune_outputs, tuple(args.input_boundary), tuple(args.output_boundary),
                 tuple(args.include))


def scope_line(summary: dict[str, Any]) -> str:
    """One line saying what was analysed (from :func:`~morphscope.analyzers.conventions.scope_summary`)."""
    parts = [f"{summary['analysed_ops']} of {summary['total_ops']} ops",
             f"outputs pruned: {summary['prune_outputs']}"]
    for key, label in (("input_boundary", "after"), ("output_boundary", "up to"), ("include", "matching")):
        if summary[key]:
            parts.append(f"{label} {', '.join(summary[key])}")
    if summary["pinned_outside"]:
        parts.append(f"{summary['pinned_outside']} channel spaces outside kept at full width")
    return "; ".join(parts) + f" ({summary['convention']} convention)"
