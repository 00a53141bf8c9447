"""Channel spaces and groups (DESIGN section 2): which channels live and die together.

Every op output is a *layout*: a tuple of :class:`Segment`, each a whole channel *space* laid
end to end (a concat output has one segment per input). Source ops (conv, linear) open a new
space; elementwise ops (residual adds, squeeze-excitation gates) and depthwise convs *tie*
spaces into one group (union-find); concat and split rearrange segments; anything the rules
cannot follow is *pinned* (never pruned) with a reason. One :class:`ChannelRule` per op kind,
in :data:`CHANNEL_RULES`: a handler plus the properties callers ask about (``is_source``,
``ties_inputs``, ``passthrough``, ``channel_weights``); the builder never names a kind itself.

Grouped convs (1 < groups < in_channels): each of the g groups must keep the same number of
channels, so the spaces they read and write get a *quantum* g: alive counts are made equal
across groups (:mod:`morphscope.analyzers.alive`) and a width multiplier rounds down to a multiple of g.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from scipy import sparse

from morphscope.graph import SOURCE_KINDS, ChannelGraph, Kind, is_depthwise, opens_space


@dataclass(frozen=True)
class Segment:
    """One space inside a layout. ``repeat`` > 1: each channel appears ``repeat`` times,
    either consecutively (``"block"``: depthwise multiplier, PyTorch flatten) or as whole
    copies of the space (``"tile"``: Keras' channels-last flatten)."""

    space: int
    repeat: int = 1
    interleave: str = "block"


Layout = tuple[Segment, ...]


@dataclass(frozen=True)
class ChannelSpaces:
    """The result of :func:`build_channel_spaces`; spaces are numbered 0..n-1 in graph order.

    sizes : seed channels per space. pinned / pin_reasons : spaces never pruned and why.
    quantum : per space, channel counts must stay multiples of it (grouped convs).
    writers : per space, the source ops writing it (a tied group has several).
    bn_cover : per space, ``(bn op, offset into its gamma vector)`` of every bn scaling it.
    op_in / op_out : the layout each op reads (its data input) and writes.
    source_ops : ops opening a space of their own (:func:`~morphscope.graph.opens_space`), in
        graph order.
    residual_branches : per add op, each input that is a real branch -> the ops only that
        input depends on since the fork, in graph order (see :func:`residual_branches`).
    concat_inputs : per concat op, its inputs by port.
    """

    sizes: np.ndarray
    pinned: np.ndarray
    pin_reasons: dict[int, str]
    quantum: np.ndarray
    writers: dict[int, list[str]]
    bn_cover: dict[int, list[tuple[str, int]]]
    op_in: dict[str, Layout]
    op_out: dict[str, Layout]
    framework: str = "torch"
    source_ops: tuple[str, ...] = ()
    residual_branches: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    concat_inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def n_spaces(self) -> int:
        return len(self.sizes)

    def name_of(self, space: int) -> str:
        """A readable name: the first op writing it (``layer1.0.conv3 (+3 tied)``)."""
        writers = self.writers.get(space, [])
        if not writers:
            return f"space{space}"
        return writers[0] + (f" (+{len(writers) - 1} tied)" if len(writers) > 1 else "")


class _Builder:
    """Mutable state while walking the graph; rules call its primitives."""

    def __init__(self, graph: ChannelGraph) -> None:
        self.graph = graph
        self.parent: list[int] = []
        self.size: list[int] = []
        self.pinned: dict[int, str] = {}
        self.quantum: dict[int, int] = {}
        self.writers: dict[int, list[str]] = {}
        self.out: dict[str, Layout] = {}
        self.op_in: dict[str, Layout] = {}
        self.bn: list[tuple[str, Layout]] = []
        self.split: dict[int, tuple[int, ...]] = {}  # a root cut into consecutive pieces

    # union-find over spaces
    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def new_space(self, size: int, writer: str | None = None, pin: str | None = None) -> Layout:
        s = len(self.parent)
        self.parent.append(s)
        self.size.append(int(size))
        if writer:
            self.writers[s] = [writer]
        if pin:
            self.pinned[s] = pin
        return (Segment(s),)

    def pin(self, layout: Layout, reason: str) -> None:
        for seg in self.expand(layout):
            self.pinned.setdefault(self.find(seg.space), reason)

    def expand(self, layout: Layout) -> Layout:
        """``layout`` with every space that was cut (:meth:`cut`) replaced by its pieces."""
        out: list[Segment] = []
        for seg in layout:
            root = self.find(seg.space)
            if root in self.split:
                pieces = tuple(Segment(p, seg.repeat, seg.interleave) for p in self.split[root])
                out.extend(self.expand(pieces))
            else:
                out.append(Segment(root, seg.repeat, seg.interleave))
        return tuple(out)

    def cut(self, root: int, sizes: list[int]) -> None:
        """Cut a space into consecutive pieces of ``sizes`` channels; each piece keeps the
        space's writers and pin (every layout holding the space reads the pieces in order)."""
        pieces = tuple(self.new_space(size)[0].space for size in sizes)
        for piece in pieces:
            self.writers[piece] = list(self.writers.get(root, []))
            if root in self.pinned:
                self.pinned[piece] = self.pinned[root]
        self.split[root] = pieces

    def align(self, a: Layout, b: Layout) -> tuple[Layout, Layout] | None:
        """Cut spaces so ``a`` and ``b`` have segments of equal sizes, position by position
        (morph-net slices an op into the pieces its consumers need, ``OpSlice``). None when
        they cannot line up: different channel counts, repeated channels (flatten, depthwise
        multipliers) or a grouped conv's space (its groups must stay equal)."""
        while True:
            a, b = self.expand(a), self.expand(b)
            if _channels(a, self) != _channels(b, self) or any(s.repeat != 1 for s in a + b):
                return None
            cuts = {o for o, _ in _offsets(a, self)} | {o for o, _ in _offsets(b, self)}
            needed = [(seg.space, sorted(c - o for c in cuts if o < c < o + self.size[seg.space]))
                      for o, seg in _offsets(a, self) + _offsets(b, self)]
            root, inner = next(((r, i) for r, i in needed if i), (None, None))
            if root is None:
                return a, b
            if self.quantum.get(root, 1) > 1:
                return None
            self.cut(root, np.diff([0, *inner, self.size[root]]).tolist())

    def pinned_output(self, name: str, attrs: Mapping[str, Any], inputs: list[Layout], why: str) -> Layout:
        for layout in inputs:
            self.pin(layout, why)
        return self.new_space(attrs.get("out_channels") or 0, writer=name, pin=why)

    def tie(self, a: Layout, b: Layout, where: str) -> bool:
        """Tie two layouts channel for channel. Segments of different sizes are cut to line
        up (a concat added to one conv: each concat input tied to its slice of the conv); if
        they cannot be (see :meth:`align`), both are pinned."""
        a, b = self.expand(a), self.expand(b)
        if [(self.size[x.space], x.repeat, x.interleave) for x in a] != \
                [(self.size[y.space], y.repeat, y.interleave) for y in b]:
            aligned = self.align(a, b)
            if aligned is None:
                why = (f"tied at {where} with a differently laid out input that cannot be cut to "
                       "match (channel counts, repeated channels or a grouped conv's groups differ)")
                self.pin(a, why)
                self.pin(b, why)
                return False
            a, b = aligned
        for x, y in zip(a, b):
            rx, ry = self.find(x.space), self.find(y.space)
            if rx != ry:
                self.parent[ry] = rx
                wx, wy = self.writers.pop(rx, []), self.writers.pop(ry, [])
                big, small = (wx, wy) if len(wx) >= len(wy) else (wy, wx)
                big.extend(small)  # small into large: linear over a long residual stack
                self.writers[rx] = big
                if ry in self.pinned:
                    self.pinned.setdefault(rx, self.pinned.pop(ry))
                if ry in self.quantum:
                    self.quantum[rx] = math.lcm(self.quantum.get(rx, 1), self.quantum.pop(ry))
        return True

    def set_quantum(self, layout: Layout, q: int) -> None:
        for seg in self.expand(layout):
            root = self.find(seg.space)
            self.quantum[root] = math.lcm(self.quantum.get(root, 1), q)


Handler = Callable[[_Builder, str, Mapping[str, Any], list[Layout]], Layout]


@dataclass(frozen=True)
class ChannelRule:
    """How one op kind treats channels: its handler and the facts callers ask about.

    kind : the kind it handles.
    handler : ``(builder, name, attrs, input layouts) -> output layout``.
    ties_inputs : full-width inputs and the output are one group (residual adds, gates).
    passthrough : the output is the input's layout, channel for channel.
    channel_weights : owns weights indexed by its channels (resized by a rebuild).
    """

    kind: Kind
    handler: Handler
    ties_inputs: bool = False
    passthrough: bool = False
    channel_weights: bool = False

    @property
    def is_source(self) -> bool:
        """Ops of this kind mix channels through a weight and open a new space for their
        output (conv, linear: :data:`~morphscope.graph.SOURCE_KINDS`); a depthwise conv
        keeps its input's space instead (:func:`~morphscope.graph.opens_space`)."""
        return self.kind in SOURCE_KINDS


def _channels(layout: Layout, builder: _Builder) -> int:
    if len(layout) == 1:  # the common case, without a generator
        return builder.size[builder.find(layout[0].space)] * layout[0].repeat
    return sum(builder.size[builder.find(s.space)] * s.repeat for s in layout)


def _offsets(layout: Layout, builder: _Builder) -> list[tuple[int, Segment]]:
    """``(first channel, segment)`` of each segment of ``layout``."""
    out, offset = [], 0
    for seg in layout:
        out.append((offset, seg))
        offset += builder.size[builder.find(seg.space)] * seg.repeat
    return out


def _data_input(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    """The layout a conv/linear reads; if the walk lost track of its channels (attention
    reshapes), the op reads a new pinned space of its own in_channels instead."""
    x = inputs[0] if inputs else ()
    want = attrs.get("in_channels")
    if want is not None and _channels(x, b) != want:
        why = f"channels could not be followed into {name}"
        b.pin(x, why)
        x = b.new_space(want, pin=why)
        b.op_in[name] = x
    return x


def _source(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    _data_input(b, name, attrs, inputs)
    return b.new_space(attrs["out_channels"], writer=name)


def _model_input(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    return b.new_space(attrs.get("out_channels") or 0, writer=name, pin="model input")


def _model_output(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    for layout in inputs:
        b.pin(layout, "model output")
    return ()


def _conv(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    groups, in_ch, out_ch = attrs.get("groups", 1), attrs.get("in_channels"), attrs["out_channels"]
    if groups == 1 or attrs.get("transposed"):
        if groups > 1:
            return b.pinned_output(name, attrs, inputs, f"grouped transposed conv {name}")
        return _source(b, name, attrs, inputs)
    x = _data_input(b, name, attrs, inputs)
    if is_depthwise(attrs):  # output channel j*M+m reads input channel j
        multiplier = out_ch // in_ch
        if multiplier == 1:
            return x
        if any(seg.repeat != 1 for seg in x):
            return b.pinned_output(name, attrs, inputs, f"depthwise multiplier on a repeated layout at {name}")
        return tuple(Segment(seg.space, multiplier, "block") for seg in x)
    if len(x) != 1 or x[0].repeat != 1:  # grouped conv over a concat: groups would straddle inputs
        return b.pinned_output(name, attrs, inputs, f"grouped conv {name} reads several spaces")
    b.set_quantum(x, groups)
    out = b.new_space(out_ch, writer=name)
    b.set_quantum(out, groups)
    return out


def _passthrough(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    x = inputs[0] if inputs else ()
    out_ch = attrs.get("out_channels")
    if x and out_ch is not None and _channels(x, b) == out_ch:
        return x
    return b.pinned_output(name, attrs, inputs, f"{attrs['kind'].value} op {name} changes the channels")


def _bn(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    """Norms pass channels through; a group norm of g groups gives its space the quantum g
    (each group keeps the same count, so the rebuilt norm keeps ``num_groups``), or pins it
    when it normalizes several spaces at once."""
    out = _passthrough(b, name, attrs, inputs)
    groups = attrs.get("norm_groups", 1)
    if groups > 1 and len(out) == 1 and out[0].repeat == 1:
        b.set_quantum(out, groups)
    elif groups > 1:
        b.pin(out, f"group norm {name} spans several channel spaces")
    if attrs.get("gamma_key"):
        b.bn.append((name, out))
    return out


def _elementwise(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    """Residual adds and gates: full-width inputs are tied; 1-channel (broadcast) inputs are not."""
    out_ch = attrs.get("out_channels")
    full = [x for x in inputs if _channels(x, b) == out_ch and out_ch != 1]
    if not full:
        return b.pinned_output(name, attrs, inputs, f"elementwise op {name} with no full-width input")
    for other in full[1:]:
        b.tie(full[0], other, name)
    return full[0]


def _concat(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    return tuple(seg for layout in inputs for seg in layout)


def _split(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    """A channel slice: whole segments pass; a cut through a space pins it."""
    start, length = attrs.get("channel_offset", 0), attrs.get("out_channels") or 0
    picked, offset = [], 0
    for seg in inputs[0]:
        width = b.size[b.find(seg.space)] * seg.repeat
        if start <= offset and offset + width <= start + length:
            picked.append(seg)
        elif offset < start + length and start < offset + width:
            return b.pinned_output(name, attrs, inputs, f"split {name} cuts through a space")
        offset += width
    return tuple(picked)


def _flatten(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    """Flatten into a linear: each channel feeds H*W features, laid out per framework."""
    x, out_ch = inputs[0], attrs.get("out_channels")
    in_ch = _channels(x, b)
    if out_ch == in_ch:
        return x
    if not out_ch or out_ch % in_ch or any(seg.repeat != 1 for seg in x):
        return b.pinned_output(name, attrs, inputs, f"flatten {name} changes the channels")
    pixels = out_ch // in_ch
    if b.graph.framework == "keras":  # channels-last: c, c+C, c+2C, ... -> the whole layout tiles
        if len(x) != 1:
            return b.pinned_output(name, attrs, inputs, f"channels-last flatten {name} of a concat")
        return (Segment(x[0].space, pixels, "tile"),)
    return tuple(Segment(seg.space, pixels, "block") for seg in x)


def _opaque(b: _Builder, name: str, attrs: Mapping[str, Any], inputs: list[Layout]) -> Layout:
    return b.pinned_output(name, attrs, inputs, f"opaque op {name} ({attrs.get('op', '?')})")


CHANNEL_RULES: Mapping[Kind, ChannelRule] = {rule.kind: rule for rule in (
    ChannelRule(Kind.INPUT, _model_input),
    ChannelRule(Kind.OUTPUT, _model_output),
    ChannelRule(Kind.CONV, _conv, channel_weights=True),
    ChannelRule(Kind.LINEAR, _source, channel_weights=True),
    ChannelRule(Kind.BN, _bn, passthrough=True, channel_weights=True),
    ChannelRule(Kind.ADD, _elementwise, ties_inputs=True),
    ChannelRule(Kind.MUL, _elementwise, ties_inputs=True),
    ChannelRule(Kind.CONCAT, _concat),
    ChannelRule(Kind.SPLIT, _split),
    ChannelRule(Kind.FLATTEN, _flatten),
    ChannelRule(Kind.OPAQUE, _opaque),
    *(ChannelRule(kind, _passthrough, passthrough=True) for kind in (
        Kind.ACT, Kind.POOL, Kind.GLOBAL_POOL, Kind.RESHAPE, Kind.PAD, Kind.RESIZE, Kind.IDENTITY)),
)}


def is_source_kind(attrs: Mapping[str, Any], rules: Mapping[Kind, ChannelRule] | None = None) -> bool:
    """Whether the op's kind mixes channels through a weight (conv, depthwise included; linear)."""
    rules = CHANNEL_RULES if rules is None else rules
    return rules[attrs["kind"]].is_source


def build_channel_spaces(graph: ChannelGraph,
                         rules: Mapping[Kind, ChannelRule] | None = None) -> ChannelSpaces:
    """Walk the graph once and return its channel spaces, ties, pins and bn coverage.

    Parameters
    ----------
    graph : ChannelGraph
    rules : mapping of Kind to rule, optional
        Defaults to :data:`CHANNEL_RULES`; pass ``{**CHANNEL_RULES, **extra}`` to extend.

    Examples
    --------
    A residual add ties the shortcut and the branch into one space:

    >>> g = ChannelGraph("demo", "torch", (3, 8, 8))
    >>> _ = g.add_op("x", Kind.INPUT, out_channels=3)
    >>> _ = g.add_op("a", Kind.CONV, in_channels=3, out_channels=5, groups=1)
    >>> _ = g.add_op("b", Kind.CONV, in_channels=5, out_channels=5, groups=1)
    >>> _ = g.add_op("add", Kind.ADD, out_channels=5)
    >>> for u, v, p in [("x", "a", 0), ("a", "b", 0), ("b", "add", 0), ("a", "add", 1)]:
    ...     g.connect(u, v, p)
    >>> spaces = build_channel_spaces(g)
    >>> spaces.writers[spaces.op_out["add"][0].space]
    ['a', 'b']
    """
    rules = CHANNEL_RULES if rules is None else rules
    b = _Builder(graph)
    for name, attrs in graph.ops():
        inputs = [b.out[u] for u in graph.inputs_of(name)]
        if inputs:
            b.op_in[name] = inputs[0]
        b.out[name] = rules[attrs["kind"]].handler(b, name, attrs, inputs)
    return _finish(b, rules)


def _finish(b: _Builder, rules: Mapping[Kind, ChannelRule]) -> ChannelSpaces:
    graph = b.graph
    roots = sorted({b.find(s) for s in range(len(b.parent))} - set(b.split))
    index = {root: i for i, root in enumerate(roots)}

    seen: dict[int, Layout] = {}  # passthrough ops share their input's layout object: canon once

    def canon(layout: Layout) -> Layout:
        done = seen.get(id(layout))
        if done is None:
            done = seen[id(layout)] = tuple(Segment(index[s.space], s.repeat, s.interleave)
                                            for s in b.expand(layout))
        return done

    sources, adds, concats = [], [], []  # one pass over the ops for the topology records
    for name, attrs in graph.ops():
        if opens_space(attrs):
            sources.append(name)
        elif attrs["kind"] == Kind.ADD:
            adds.append(name)
        elif attrs["kind"] == Kind.CONCAT:
            concats.append(name)
    sizes = [b.size[r] for r in roots]
    bn_cover: dict[int, list[tuple[str, int]]] = {}
    for bn_name, layout in b.bn:
        for offset, seg in segment_offsets(canon(layout), sizes):
            if seg.repeat == 1:
                bn_cover.setdefault(seg.space, []).append((bn_name, offset))
    return ChannelSpaces(
        sizes=np.array(sizes, dtype=np.int64),
        pinned=np.array([r in b.pinned for r in roots], dtype=bool),
        pin_reasons={index[r]: why for r, why in b.pinned.items() if r in index},
        quantum=np.array([b.quantum.get(r, 1) for r in roots], dtype=np.int64),
        writers={index[r]: sorted(ws, key=graph.position) for r, ws in b.writers.items() if r in index},
        bn_cover=bn_cover,
        op_in={n: canon(layout) for n, layout in b.op_in.items()},
        op_out={n: canon(layout) for n, layout in b.out.items()},
        framework=graph.framework,
        source_ops=tuple(sources),
        residual_branches={add: _branches(graph, add, rules) for add in adds},
        concat_inputs={n: tuple(graph.inputs_of(n)) for n in concats},
    )


def segment_offsets(layout: Layout, sizes: Any) -> list[tuple[int, Segment]]:
    """``(first channel, segment)`` of each segment of ``layout``, for per-space ``sizes``.

    >>> segment_offsets((Segment(0), Segment(1, 2), Segment(0)), [13, 7])
    [(0, Segment(space=0, repeat=1, interleave='block')), (13, Segment(space=1, repeat=2, interleave='block')), (27, Segment(space=0, repeat=1, interleave='block'))]
    """
    out, offset = [], 0
    for seg in layout:
        out.append((offset, seg))
        offset += int(sizes[seg.space]) * seg.repeat
    return out


def layout_width(layout: Layout, widths: Any) -> int:
    """Channels of ``layout`` for per-space ``widths`` (a repeated space counts each time).

    >>> layout_width((Segment(0), Segment(1, 6, "tile")), [13, 2])
    25
    """
    return int(sum(widths[s.space] * s.repeat for s in layout))


def residual_branches(graph: ChannelGraph,
                      rules: Mapping[Kind, ChannelRule] | None = None) -> dict[str, dict[str, tuple[str, ...]]]:
    """Per add op: each input that is a real branch -> the ops only that input depends on
    (since the fork), in graph order. Identity shortcuts (no op of a source kind among the
    exclusive ones) are left out.

    Notes
    -----
    One backward search per add, latest op first (a heap on graph position), labelling each
    op with the one input reaching it or "shared"; it stops when only shared ops are left to
    expand, so a residual block costs its own size (n log n over a residual stack, not n^2).

    Examples
    --------
    >>> g = ChannelGraph("demo", "torch", (3, 8, 8))
    >>> for name, kind in [("x", Kind.INPUT), ("a", Kind.CONV), ("b", Kind.CONV), ("add", Kind.ADD)]:
    ...     _ = g.add_op(name, kind, groups=1)
    >>> for u, v, p in [("x", "a", 0), ("a", "b", 0), ("b", "add", 0), ("a", "add", 1)]:
    ...     g.connect(u, v, p)
    >>> residual_branches(g)
    {'add': {'b': ('b',)}}
    """
    rules = CHANNEL_RULES if rules is None else rules
    return {add: _branches(graph, add, rules) for add, attrs in graph.ops() if attrs["kind"] == Kind.ADD}


def _branches(graph: ChannelGraph, add: str, rules: Mapping[Kind, ChannelRule]) -> dict[str, tuple[str, ...]]:
    """One add's real branches (see :func:`residual_branches`)."""
    inputs = graph.inputs_of(add)
    if len(inputs) < 2:
        return {}
    exclusive = _exclusive_ancestors(graph, inputs)
    return {u: ops for u, ops in zip(inputs, exclusive) if any(rules[graph[n]["kind"]].is_source for n in ops)}


_SHARED = -1


def _exclusive_ancestors(graph: ChannelGraph, inputs: list[str]) -> list[tuple[str, ...]]:
    """For each input u: u and its ancestors that reach no other input, in graph order."""
    label = {u: i for i, u in enumerate(inputs)}
    heap = [(-graph.position(u), u) for u in inputs]
    heapq.heapify(heap)
    unshared = len(heap)  # queued ops still owned by one input
    found: list[list[str]] = [[] for _ in inputs]
    while unshared:
        _, name = heapq.heappop(heap)
        mine = label[name]
        if mine != _SHARED:
            unshared -= 1
            found[mine].append(name)
        for pred in graph.nx.predecessors(name):
            seen = label.get(pred)
            if seen is None:
                label[pred] = mine
                heapq.heappush(heap, (-graph.position(pred), pred))
                unshared += mine != _SHARED
            elif seen != mine and seen != _SHARED:
                label[pred] = _SHARED
                unshared -= 1
    return [tuple(reversed(ops)) for ops in found]


@dataclass(frozen=True)
class SpaceMatrices:
    """``a_in = m_in @ widths`` and ``a_out = m_out @ widths``, per op (rows in cost-model
    order); sparse (CSR), one entry per (op, space) pair it reads or writes."""

    m_in: sparse.csr_array
    m_out: sparse.csr_array


def space_matrices(spaces: ChannelSpaces, op_names: tuple[str, ...]) -> SpaceMatrices:
    """Sparse op x space matrices counting how many channels of each space each op reads/writes.

    >>> m = space_matrices(build_channel_spaces(_demo_graph()), ("x", "conv"))
    >>> m.m_in.toarray().tolist(), m.m_out.toarray().tolist()
    ([[0.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    """
    return SpaceMatrices(_layout_matrix(spaces.op_in, op_names, spaces.n_spaces),
                         _layout_matrix(spaces.op_out, op_names, spaces.n_spaces))


def _layout_matrix(layouts: Mapping[str, Layout], op_names: tuple[str, ...], n_spaces: int) -> sparse.csr_array:
    rows, cols, counts = [], [], []
    for row, name in enumerate(op_names):
        for seg in layouts.get(name, ()):
            rows.append(row)
            cols.append(seg.space)
            counts.append(seg.repeat)
    return sparse.csr_array((np.array(counts, dtype=np.float64), (np.array(rows, dtype=np.int64),
                             np.array(cols, dtype=np.int64))), shape=(len(op_names), n_spaces))


def _demo_graph() -> ChannelGraph:
    """x(3) -> conv(5): the two-space graph of the examples."""
    g = ChannelGraph("demo", "torch", (3, 4, 4))
    g.add_op("x", Kind.INPUT, out_channels=3)
    g.add_op("conv", Kind.CONV, in_channels=3, out_channels=5, groups=1)
    g.connect("x", "conv")
    return g
