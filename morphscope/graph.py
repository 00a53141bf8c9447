"""The ChannelGraph: the one contract between importers, analyzers, explorer and regularizers.

A thin wrapper over a :class:`networkx.DiGraph` (DESIGN section 1). Depends on networkx and
numpy only, and round-trips through JSON so a parsed model can be cached, diffed and shipped.

Node key: the framework's own layer or module path (``layer1.0.conv1``, ``conv2_block1_1_conv``).
Node fields (absent where meaningless): ``kind`` (a :class:`Kind`), ``op`` (the framework op it
came from, e.g. ``aten.conv2d`` or ``Conv2D``), ``in_channels``, ``out_channels``, ``groups``,
``kernel``, ``stride``, ``in_spatial``, ``out_spatial`` (tuples), ``bias``, ``transposed``,
``params`` and ``trainable_params`` (scalars the op owns, by its framework's rule),
``gamma_key`` (bn: checkpoint key of its scale vector), ``matmuls`` (opaque matrix products:
a list of ``(batch, m, k, n)``).
Edge ``u -> v``: the tensor ``u`` produces feeds ``v``; ``port`` is its position among v's inputs.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from enum import Enum
from typing import Any, Iterator

import networkx as nx

from morphscope.errors import UnsupportedFileError

FORMAT_VERSION = 1
FORMAT_NAME = "morphscope.channel_graph"


class Kind(str, Enum):
    """The closed vocabulary of op kinds (DESIGN section 1)."""

    INPUT = "input"  # model inputs: torch placeholders, keras InputLayer
    CONV = "conv"  # aten.conv1d/2d/3d/convolution, conv_transpose*; Conv1D/2D/3D, DepthwiseConv2D
    LINEAR = "linear"  # aten.linear/addmm/mm with a weight; keras Dense, EinsumDense
    BN = "bn"  # per-channel affine norms with a learnable scale: batch/layer/group/instance norm
    ADD = "add"  # elementwise add/sub (residual adds); keras Add, Subtract, ops.add
    MUL = "mul"  # elementwise mul/div (squeeze-excitation gates, layer scale); keras Multiply
    CONCAT = "concat"  # aten.cat; keras Concatenate, ops.concatenate
    SPLIT = "split"  # one channel slice of its input: aten.split/chunk + getitem, channel slicing
    ACT = "act"  # relu, silu, gelu, sigmoid, hardswish, softmax, ...; keras Activation, ReLU
    POOL = "pool"  # max/avg pooling with a window; keras MaxPooling2D, AveragePooling2D
    GLOBAL_POOL = "global_pool"  # adaptive pooling, mean over spatial dims; GlobalAveragePooling
    FLATTEN = "flatten"  # aten.flatten; keras Flatten
    RESHAPE = "reshape"  # view/reshape/permute/transpose/contiguous; keras Reshape, Permute
    PAD = "pad"  # aten.pad/constant_pad_nd; keras ZeroPadding2D
    RESIZE = "resize"  # interpolation / upsampling; keras UpSampling2D, Resizing
    IDENTITY = "identity"  # dropout, clone, alias, stochastic depth in eval, Rescaling
    OUTPUT = "output"  # model outputs
    OPAQUE = "opaque"  # anything else: its channels are pinned, never pruned


_KINDS: dict[str, Kind] = {k.value: k for k in Kind}  # by value; a Kind (a str) finds itself


def _kind(value: Any) -> Kind:
    """``Kind(value)`` by a dict lookup (a Python-level Enum call costs more, 10^5 times)."""
    return _KINDS.get(value) or Kind(value)


class ChannelGraph:
    """A model's op graph with channel-level attributes.

    Parameters
    ----------
    name : str
        What the model was loaded from (a file path, ``torchvision:resnet50``, ...).
    framework : str
        ``"torch"`` or ``"keras"``; decides how parameter counts are read (DESIGN section 10).
    input_shape : tuple of int
        The per-image input shape the graph was captured at, channels first (C, H, W).
    detached_params : dict of str to int, optional
        Parameters the model owns that the inference graph never uses (training-only
        auxiliary heads), by module path. They count in the parameter total, not in MACs.
    """

    def __init__(
        self,
        name: str,
        framework: str,
        input_shape: tuple[int, ...],
        detached_params: dict[str, int] | None = None,
    ) -> None:
        self.name = name
        self.framework = framework
        self.input_shape = tuple(input_shape)
        self.detached_params = dict(detached_params or {})
        self.notes: list[str] = []  # how the graph was captured, when it matters
        self.nx = nx.DiGraph()
        self._order: tuple[str, ...] | None = None  # topological order, cached until a change
        self._position: dict[str, int] | None = None

    # -- building ---------------------------------------------------------------------------
    def add_op(self, name: str, kind: Kind, **attrs: Any) -> str:
        """Add an op node named ``name`` (must be new) and return the name."""
        if name in self.nx:
            raise ValueError(f"{self.name}: duplicate op name {name!r}")
        self.nx.add_node(name, kind=_kind(kind), **attrs)
        self._order = self._position = None
        return name

    def connect(self, src: str, dst: str, port: int = 0) -> None:
        """Add the edge ``src -> dst``: src's output is dst's input number ``port``."""
        self.nx.add_edge(src, dst, port=port)
        self._order = self._position = None

    # -- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def __contains__(self, name: str) -> bool:
        return name in self.nx

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self.nx._node[name]  # networkx's node-attribute dict: no view object per lookup

    def ops(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(name, attrs)`` in a topological order (inputs first, stable).

        The order is sorted once and cached until :meth:`add_op` or :meth:`connect` changes
        the graph.
        """
        nodes = self.nx._node
        for name in self.order():
            yield name, nodes[name]

    def order(self) -> tuple[str, ...]:
        """Op names in the topological order of :meth:`ops` (cached)."""
        if self._order is None:
            self._order = _topological_order(self.nx)
        return self._order

    def position(self, name: str) -> int:
        """Index of ``name`` in :meth:`order`."""
        if self._position is None:
            self._position = {n: i for i, n in enumerate(self.order())}
        return self._position[name]

    def inputs_of(self, name: str) -> list[str]:
        """The ops feeding ``name``, ordered by port."""
        preds = self.nx._pred[name]  # predecessor -> edge attributes
        if len(preds) < 2:
            return list(preds)
        return sorted(preds, key=lambda u: preds[u]["port"])

    def of_kind(self, *kinds: Kind) -> list[str]:
        """Names of the ops of the given kinds, in topological order."""
        wanted = set(kinds)
        return [name for name, attrs in self.ops() if attrs["kind"] in wanted]

    # -- JSON -------------------------------------------------------------------------------
    def to_json(self) -> str:
        """Serialize to a JSON string (tuples become lists; :meth:`from_json` restores them)."""
        nodes = [{"name": n, **_jsonable(a)} for n, a in self.nx.nodes(data=True)]
        edges = [[u, v, p] for u, v, p in self.nx.edges(data="port")]
        doc = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "framework": self.framework,
            "input_shape": list(self.input_shape),
            "detached_params": self.detached_params,
            "notes": self.notes,
            "nodes": nodes,
            "edges": edges,
        }
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str, source: str = "graph JSON") -> "ChannelGraph":
        """Rebuild a graph written by :meth:`to_json`.

        Parameters
        ----------
        text : str
        source : str
            What the text was read from (a file name), for error messages.

        Raises
        ------
        UnsupportedFileError
            If the text is not a channel graph of this :data:`FORMAT_VERSION`: bad JSON, a
            missing field, an unknown op kind, an edge to an op that does not exist, a cycle.
        """
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise UnsupportedFileError(f"{source}: not JSON ({err})") from err
        return cls.from_doc(doc, source)

    @classmethod
    def from_doc(cls, doc: Any, source: str = "graph JSON") -> "ChannelGraph":
        """Rebuild a graph from the parsed document of :meth:`to_json` (see :meth:`from_json`,
        which parses the text first; readers that parsed it themselves call this).

        The one validator of the format: every field a reader relies on is checked for type and
        range (counts non-negative integers, the input shape positive), node names unique,
        edges ``[source, target, port]`` between known ops, no cycle.
        """
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise UnsupportedFileError(f"{source}: not a MorphScope channel graph "
                                       f"(no \"format\": \"{FORMAT_NAME}\")")
        if doc.get("version") != FORMAT_VERSION:
            raise UnsupportedFileError(f"{source}: channel graph format version "
                                       f"{doc.get('version')!r}; this MorphScope reads version "
                                       f"{FORMAT_VERSION}")
        problem = _header_problem(doc)
        if problem:
            raise UnsupportedFileError(f"{source}: malformed channel graph ({problem})")
        graph = cls(doc["name"], doc["framework"], tuple(doc["input_shape"]),
                    doc.get("detached_params"))
        graph.notes = list(doc.get("notes", []))
        nodes = [_node_of(node, source) for node in doc["nodes"]]
        names = {name for name, _ in nodes}
        if len(names) != len(nodes):
            twice = next(n for n, count in Counter(n for n, _ in nodes).items() if count > 1)
            raise UnsupportedFileError(f"{source}: duplicate op name {twice!r}")
        edges = [_edge_of(edge, names, source) for edge in doc["edges"]]
        graph.nx.add_nodes_from(nodes)  # in bulk: a graph JSON can hold 10^5 ops
        graph.nx.add_edges_from(edges)
        try:
            graph.order()
        except nx.NetworkXUnfeasible as err:
            raise UnsupportedFileError(f"{source}: the channel graph has a cycle") from err
        return graph


_INT_FIELDS = ("in_channels", "out_channels", "groups", "params", "trainable_params")
_TUPLE_INT_FIELDS = ("kernel", "stride", "in_spatial", "out_spatial")
FRAMEWORKS = ("torch", "keras")


def _ints(values: Any, minimum: int) -> bool:
    """A list of integers (bools excluded), each in ``[minimum, 2**62)``."""
    return isinstance(values, list) and all(type(v) is int and minimum <= v < 2**62 for v in values)


def _header_problem(doc: dict[str, Any]) -> str | None:
    """What is wrong with a document's graph-level fields (None if nothing)."""
    if not isinstance(doc.get("name"), str) or doc.get("framework") not in FRAMEWORKS:
        return f"name must be a string and framework one of {list(FRAMEWORKS)}"
    if not _ints(doc.get("input_shape"), minimum=1):
        return "input_shape must be a list of integers in [1, 2**62)"
    if not isinstance(doc.get("nodes"), list) or not isinstance(doc.get("edges"), list):
        return "nodes and edges must be lists"
    detached = doc.get("detached_params", {})
    if not isinstance(detached, dict) or not _ints(list(detached.values()), minimum=0):
        return "detached_params must map names to integers in [0, 2**62)"
    if not isinstance(doc.get("notes", []), list):
        return "notes must be a list"
    return None


def _node_of(node: Any, source: str) -> tuple[str, dict[str, Any]]:
    """(name, attributes) of one node of a document, typed and checked."""
    if not isinstance(node, dict) or not isinstance(node.get("name"), str):
        raise UnsupportedFileError(f"{source}: malformed channel graph (every node needs a string name)")
    attrs = dict(node)
    name = attrs.pop("name")
    if "kind" not in attrs:
        raise UnsupportedFileError(f"{source}: channel graph lacks the field 'kind' (op {name!r})")
    if not isinstance(attrs["kind"], str) or attrs["kind"] not in _KINDS:
        raise UnsupportedFileError(f"{source}: malformed channel graph (op {name!r}: kind "
                                   f"{str(attrs['kind'])[:40]!r}; choose from {sorted(_KINDS)})")
    for key in _INT_FIELDS:
        if key in attrs and not _ints([attrs[key]], minimum=0):
            raise UnsupportedFileError(f"{source}: malformed channel graph (op {name!r}: {key} "
                                       "must be an integer in [0, 2**62))")
    for key in _TUPLE_INT_FIELDS:
        if key in attrs and not _ints(attrs[key], minimum=0):
            raise UnsupportedFileError(f"{source}: malformed channel graph (op {name!r}: {key} "
                                       "must be a list of integers in [0, 2**62))")
    for key in _LIST_FIELDS.intersection(attrs):
        attrs[key] = _from_jsonable(key, attrs[key])
    attrs["kind"] = _KINDS[attrs["kind"]]
    return name, attrs


def _edge_of(edge: Any, names: set[str], source: str) -> tuple[str, str, dict[str, int]]:
    """``(u, v, {"port": p})`` of one edge ``[u, v, p]`` between known ops."""
    if not (isinstance(edge, list) and len(edge) == 3 and isinstance(edge[0], str)
            and isinstance(edge[1], str) and _ints([edge[2]], minimum=0)):
        raise UnsupportedFileError(f"{source}: malformed channel graph (edge {str(edge)[:80]}: "
                                   "expected [source, target, port])")
    missing = next((n for n in edge[:2] if n not in names), None)
    if missing is not None:
        raise UnsupportedFileError(f"{source}: an edge names the op {missing!r}, "
                                   "which the graph does not have")
    return edge[0], edge[1], {"port": edge[2]}


# Kinds that mix channels through a weight (conv, linear): each opens a channel space for its
# output, except a depthwise conv. Node-schema facts live here so importers and analyzers share them.
SOURCE_KINDS = frozenset({Kind.CONV, Kind.LINEAR})


def is_depthwise(attrs: dict[str, Any]) -> bool:
    """A depthwise conv: each filter reads one input channel (1 < groups == in_channels).

    Its output channels are its input's (times a multiplier), so it opens no channel space.

    >>> is_depthwise({"kind": Kind.CONV, "groups": 13, "in_channels": 13})
    True
    >>> is_depthwise({"kind": Kind.CONV, "groups": 1, "in_channels": 1})
    False
    """
    return attrs["kind"] == Kind.CONV and 1 < attrs.get("groups", 1) == attrs.get("in_channels")


def opens_space(attrs: dict[str, Any]) -> bool:
    """Whether the op writes a channel space of its own: a source kind, not depthwise
    (morph-net's StructureExporter lists exactly these).

    >>> opens_space({"kind": Kind.LINEAR})
    True
    >>> opens_space({"kind": Kind.CONV, "groups": 8, "in_channels": 8})
    False
    """
    return attrs["kind"] in SOURCE_KINDS and not is_depthwise(attrs)


def _topological_order(g: nx.DiGraph) -> tuple[str, ...]:
    """Kahn's sort, the earliest ``order`` attribute first, ties in insertion order: networkx's
    ``lexicographical_topological_sort`` keyed by ``order``, on the adjacency dicts directly.

    Raises
    ------
    networkx.NetworkXUnfeasible
        If the graph has a cycle.
    """
    rank = {n: (attrs.get("order", 0), i) for i, (n, attrs) in enumerate(g._node.items())}
    indegree = {n: len(preds) for n, preds in g._pred.items()}
    ready = [(*rank[n], n) for n, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    out = []
    succ = g._succ
    while ready:
        name = heapq.heappop(ready)[2]
        out.append(name)
        for child in succ[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, (*rank[child], child))
    if len(out) != len(rank):
        raise nx.NetworkXUnfeasible("the graph has a cycle")
    return tuple(out)


_TUPLE_FIELDS = frozenset({"kernel", "stride", "in_spatial", "out_spatial", "shape"})


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, Kind):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


_LIST_FIELDS = _TUPLE_FIELDS | {"matmuls"}  # JSON lists that come back as tuples


def _from_jsonable(key: str, value: Any) -> Any:
    if type(value) is not list:
        return value
    if key == "matmuls":
        return [tuple(m) for m in value]
    return tuple(value)
