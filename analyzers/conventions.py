"""What is counted and what is analysed: the counting convention and the analysed scope.

**Conventions** (:data:`CONVENTIONS`). ``physical`` (the default) counts what the hardware
does; ``morph-net`` counts exactly as google-research/morph-net's ``resource_function.py`` and
``op_handlers.py`` do, so every number equals the reference's. Where they differ:

- a flatten (reshape) into a dense layer: physical, each alive channel feeds H*W inputs of the
  dense layer; morph-net treats the reshape as a leaf (``LeafOpHandler``): the dense layer
  reads the static flattened width, whatever the channels before it;
- a dense layer applied per pixel (or token) of a map: physical MACs count the rows;
  morph-net's ``flop_coeff`` of a ``MatMul`` is 2 whatever the rows;
- latency bytes: morph-net charges a depthwise kernel as ``kh*kw*a_in*a_out`` weights (its
  weight tensor is "bilinear"), charges no bias, reads a dense layer's input and writes its
  output once (no rows), and charges no pooling or mean; physical charges ``kh*kw*a`` for a
  depthwise kernel, the bias, every row and pooling.

Both compare |gamma| (and group-lasso norms) to the threshold in float32, as morph-net does.

**Scope** (:class:`Scope`): which model outputs may be pruned (``prune_outputs``: none, the
default, keeps every output's channels; ``feature-maps`` prunes outputs with spatial
dimensions, the maps a detection head outside the graph reads, and keeps logits; ``all`` is
morph-net's, which regularizes output ops like any other), and which part of the network is
analysed: morph-net's ``input_boundary`` / ``output_boundary`` (the ops between them) and name
patterns. Spaces written by ops outside the analysed part keep their widths and their bn
scales are not regularized; their cost still counts in every total.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from morphscope.analyzers.cost import (BYTES_PER_ELEMENT, COST_RULES, Bilinear, CostRule, OpCost,
                                       _conv_cost, _linear_cost, _channel_params_cost)
from morphscope.analyzers.spaces import CHANNEL_RULES, ChannelRule, ChannelSpaces, Layout
from morphscope.errors import MorphScopeError
from morphscope.graph import ChannelGraph, Kind, is_depthwise

PRUNE_OUTPUTS = ("none", "feature-maps", "all")


@dataclass(frozen=True)
class Scope:
    """The part of a network that is analysed and regularized.

    prune_outputs : ``none`` (every model output keeps its channels), ``feature-maps``
        (outputs with spatial dimensions may be pruned; logits stay) or ``all`` (morph-net).
    inputs : input boundary op names: excluded, and the walk back from the outputs stops there.
    outputs : output boundary op names (default: the model outputs): the walk starts there.
    include : regular expressions; when given, only ops whose name matches one are analysed.
    """

    prune_outputs: str = "none"
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    @property
    def whole(self) -> bool:
        """Everything is analysed (no boundary, no pattern)."""
        return not (self.inputs or self.outputs or self.include)


@dataclass(frozen=True)
class Convention:
    """A way of counting: cost rules and channel rules (overrides of the defaults)."""

    name: str
    description: str
    cost_rules: Mapping[Kind, CostRule]
    channel_rules: Mapping[Kind, ChannelRule]


# -- morph-net's counting ---------------------------------------------------------------------------

def _morphnet_conv_cost(attrs: Mapping[str, Any]) -> OpCost:
    """morph-net's conv bytes: no bias (``BiasAdd`` is not a supported op); a depthwise kernel
    is a bilinear weight, ``kh*kw*a_in*a_out``. FLOPs, params and size as physical."""
    physical = _conv_cost(attrs)
    moved = _conv_cost({**attrs, "bias": False}).bytes_moved
    if is_depthwise(attrs):
        kernel_bytes = float(np.prod(attrs.get("kernel") or ())) * BYTES_PER_ELEMENT
        moved = Bilinear(io=kernel_bytes, i=moved.i, o=moved.o - kernel_bytes)
    return dataclasses.replace(physical, bytes_moved=moved)


def _morphnet_linear_cost(attrs: Mapping[str, Any]) -> OpCost:
    """morph-net's ``MatMul``: FLOP coefficient 2 whatever the rows (``flop_coeff``), one row of
    input and output bytes, the weights, no bias. Params and size as physical."""
    physical = _linear_cost(attrs)
    return dataclasses.replace(physical, macs=Bilinear(io=1.0),
                               bytes_moved=Bilinear(io=BYTES_PER_ELEMENT, i=BYTES_PER_ELEMENT,
                                                    o=BYTES_PER_ELEMENT))


def _morphnet_leaf_flatten(b: Any, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    """morph-net's ``LeafOpHandler`` on a reshape: the output is a space of its own, of static
    width (never pruned); the channels before it stay prunable."""
    x = inputs[0] if inputs else ()
    if attrs.get("out_channels") == sum(b.size[b.find(s.space)] * s.repeat for s in x):
        return x
    return b.new_space(attrs.get("out_channels") or 0,
                       pin=f"{name}: morph-net counts a reshape's static width (leaf op)")


CONVENTIONS: Mapping[str, Convention] = {c.name: c for c in (
    Convention("physical", "what the hardware does: flattened channels feed H*W inputs, dense "
               "layers count their rows, latency charges bias, rows, pooling", COST_RULES, CHANNEL_RULES),
    Convention("morph-net", "google-research/morph-net's numbers: reshape is a leaf, a dense layer's "
               "FLOP coefficient ignores rows, its latency bytes as resource_function.py",
               {**COST_RULES, Kind.CONV: _morphnet_conv_cost, Kind.LINEAR: _morphnet_linear_cost,
                Kind.POOL: _channel_params_cost, Kind.GLOBAL_POOL: _channel_params_cost},
               {**CHANNEL_RULES, Kind.FLATTEN: ChannelRule(Kind.FLATTEN, _morphnet_leaf_flatten),
                Kind.RESHAPE: ChannelRule(Kind.RESHAPE, _morphnet_leaf_flatten)}),
)}
DEFAULT_CONVENTION = "physical"


def get_convention(name: str) -> Convention:
    """The :class:`Convention` called ``name``.

    Raises
    ------
    MorphScopeError
        If ``name`` is not in :data:`CONVENTIONS`.
    """
    try:
        return CONVENTIONS[name]
    except (KeyError, TypeError):
        raise MorphScopeError(f"unknown convention {name!r}; choose from {', '.join(CONVENTIONS)}") from None


# -- outputs ------------------------------------------------------------------------------------------

def _output_rule(prune_outputs: str) -> ChannelRule:
    def handler(b: Any, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
        for producer, layout in zip(b.graph.inputs_of(name), inputs):
            feature_map = bool(b.graph[producer].get("out_spatial"))
            if prune_outputs == "none" or (prune_outputs == "feature-maps" and not feature_map):
                b.pin(layout, "model output")
        return ()

    return ChannelRule(Kind.OUTPUT, handler)


def channel_rules(convention: Convention, scope: Scope) -> Mapping[Kind, ChannelRule]:
    """The convention's channel rules, with model outputs pinned as ``scope`` says.

    Raises
    ------
    MorphScopeError
        If ``scope.prune_outputs`` is not one of :data:`PRUNE_OUTPUTS`.
    """
    if scope.prune_outputs not in PRUNE_OUTPUTS:
        raise MorphScopeError(f"unknown prune_outputs {scope.prune_outputs!r}; choose from "
                              f"{', '.join(PRUNE_OUTPUTS)}")
    if scope.prune_outputs == "none":
        return convention.channel_rules
    return {**convention.channel_rules, Kind.OUTPUT: _output_rule(scope.prune_outputs)}


# -- the analysed part ------------------------------------------------------------------------------

def analysed_ops(graph: ChannelGraph, scope: Scope) -> frozenset[str] | None:
    """The ops of the analysed part (None: all of them). As morph-net's
    ``OpRegularizerManager``: from the output boundary (default: the model outputs) back along
    inputs, stopping at (and excluding) input boundary ops; then only names matching
    ``scope.include`` when given.

    Raises
    ------
    MorphScopeError
        If a boundary names no op of the graph, or a pattern is not a regular expression.
    """
    if scope.whole:
        return None
    for op in scope.inputs + scope.outputs:
        if op not in graph:
            raise MorphScopeError(f"{graph.name}: boundary {op!r} is not an op of the model "
                                  f"(e.g. {', '.join(list(graph.nx)[:5])})")
    starts = list(scope.outputs) or graph.of_kind(Kind.OUTPUT)
    stop, seen, todo = set(scope.inputs), set(), [op for op in starts if op not in scope.inputs]
    while todo:
        op = todo.pop()
        if op in seen:
            continue
        seen.add(op)
        todo.extend(u for u in graph.inputs_of(op) if u not in stop and u not in seen)
    if scope.include:
        try:
            patterns = [re.compile(p) for p in scope.include]
        except re.error as err:
            raise MorphScopeError(f"{graph.name}: include pattern is not a regular expression ({err})") from err
        seen = {op for op in seen if any(p.search(op) for p in patterns)}
    return frozenset(seen)


def restrict_spaces(spaces: ChannelSpaces, graph: ChannelGraph, scope: Scope) -> ChannelSpaces:
    """``spaces`` with everything outside the analysed part pinned: a space is analysed when
    every op writing it is inside; bn scales outside regularize nothing."""
    region = analysed_ops(graph, scope)
    if region is None:
        return spaces
    pinned, reasons = spaces.pinned.copy(), dict(spaces.pin_reasons)
    for space in range(spaces.n_spaces):
        writers = spaces.writers.get(space, [])
        if not pinned[space] and (not writers or any(w not in region for w in writers)):
            pinned[space] = True
            outside = next((w for w in writers if w not in region), "no writer")
            reasons[space] = f"outside the analysed part ({outside})"
    cover = {s: [(bn, off) for bn, off in members if bn in region]
             for s, members in spaces.bn_cover.items()}
    return dataclasses.replace(spaces, pinned=pinned, pin_reasons=reasons,
                               bn_cover={s: m for s, m in cover.items() if m})


def scope_summary(graph: ChannelGraph, spaces: ChannelSpaces, scope: Scope, convention: str) -> dict[str, Any]:
    """What was analysed, as plain data for reports: the convention, the outputs rule, the
    boundaries and patterns, and how many ops and channel spaces are inside."""
    region = analysed_ops(graph, scope)
    prunable = int((~spaces.pinned).sum())
    return {
        "convention": convention,
        "prune_outputs": scope.prune_outputs,
        "input_boundary": list(scope.inputs),
        "output_boundary": list(scope.outputs),
        "include": list(scope.include),
        "analysed_ops": len(graph) if region is None else len(region),
        "total_ops": len(graph),
        "prunable_spaces": prunable,
        "pinned_outside": sum(1 for why in spaces.pin_reasons.values() if why.startswith("outside")),
    }
