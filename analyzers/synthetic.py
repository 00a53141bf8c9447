"""Synthetic ChannelGraphs of any size, for the large-graph benchmarks and their tests.

One builder for each shape, shared by ``bench/bench_large_graphs.py`` and the tests (so the
bench measures exactly what the tests check): a conv chain or residual stack of about
``n_ops`` ops (:func:`conv_stack`), and a chain of bn ops with the state_dict keys a
checkpoint for it holds (:func:`bn_chain`, :func:`bn_chain_keys`). Only the IR is used:
no framework is imported (callers that write a checkpoint bring torch).
"""

from __future__ import annotations

from morphscope.graph import ChannelGraph, Kind

CHANNELS = 16
SPATIAL = (8, 8)
BN_PARAMS = ("weight", "bias", "running_mean", "running_var")  # a torch BatchNorm's state_dict


def conv_attrs(cin: int, cout: int, spatial: tuple[int, ...] = SPATIAL) -> dict:
    """A 3x3, stride 1, bias-free conv's fields."""
    return dict(in_channels=cin, out_channels=cout, groups=1, kernel=(3, 3), stride=(1, 1),
                in_spatial=spatial, out_spatial=spatial, bias=False, params=9 * cin * cout,
                trainable_params=9 * cin * cout)


def conv_stack(shape: str, n_ops: int, channels: int = CHANNELS) -> ChannelGraph:
    """A chain (``u<i>.conv -> u<i>.bn -> u<i>.relu``, repeated) or a residual stack
    (``u<i>.a.conv -> a.bn -> a.relu -> b.conv -> b.bn -> u<i>.add``, the add also fed by the
    block's input) of about ``n_ops`` ops, after an input ``x`` and a ``stem`` conv, ending in
    ``out``. A residual stack of ``b`` blocks has ``3 + 6 b`` ops.

    Examples
    --------
    >>> graph = conv_stack("residual", 15)
    >>> len(graph), graph["u1.add"]["out_channels"]
    (15, 16)
    """
    if shape not in ("chain", "residual"):
        raise ValueError(f"shape {shape!r}: expected 'chain' or 'residual'")
    graph = ChannelGraph(f"{shape}{n_ops}", "torch", (3, *SPATIAL))
    order = iter(range(10 ** 9))

    def add(name, kind, inputs, **attrs):
        graph.add_op(name, kind, order=next(order), **attrs)
        for port, src in enumerate(inputs):
            graph.connect(src, name, port)
        return name

    def conv_bn(prefix, x, relu=True):
        x = add(f"{prefix}.conv", Kind.CONV, [x], **conv_attrs(channels, channels))
        x = add(f"{prefix}.bn", Kind.BN, [x], out_channels=channels, gamma_key=f"{prefix}.bn.weight",
                params=2 * channels, trainable_params=2 * channels,
                param_keys=tuple(f"{prefix}.bn.{p}" for p in BN_PARAMS))
        return add(f"{prefix}.relu", Kind.ACT, [x], out_channels=channels) if relu else x

    x = add("x", Kind.INPUT, [], out_channels=3, out_spatial=SPATIAL)
    x = add("stem", Kind.CONV, [x], **conv_attrs(3, channels))
    per_unit = 3 if shape == "chain" else 6
    for i in range(max(1, (n_ops - 3) // per_unit)):
        if shape == "chain":
            x = conv_bn(f"u{i}", x)
        else:
            y = conv_bn(f"u{i}.b", conv_bn(f"u{i}.a", x), relu=False)
            x = add(f"u{i}.add", Kind.ADD, [y, x], out_channels=channels)
    add("out", Kind.OUTPUT, [x])
    return graph


def bn_chain_keys(n_bn: int) -> list[str]:
    """The state_dict keys of :func:`bn_chain`'s bn ops, in order: ``b0.weight, b0.bias,
    b0.running_mean, b0.running_var, b1.weight, ...`` (``4 n_bn`` keys)."""
    return [f"b{i}.{p}" for i in range(n_bn) for p in BN_PARAMS]


def bn_chain(n_bn: int, channels: int = 4) -> ChannelGraph:
    """``x -> b0 -> b1 -> ...``: ``n_bn`` bn ops of ``channels`` channels, each owning the four
    keys of :func:`bn_chain_keys` (gamma: ``b<i>.weight``), topologically sorted once (as the
    CLI and app do when loading).

    Examples
    --------
    >>> graph = bn_chain(3)
    >>> graph["b2"]["gamma_key"], graph["b2"]["param_keys"][-1]
    ('b2.weight', 'b2.running_var')
    """
    graph = ChannelGraph("bn_chain", "torch", (channels, 1, 1))
    graph.add_op("x", Kind.INPUT, out_channels=channels)
    for i in range(n_bn):
        graph.add_op(f"b{i}", Kind.BN, order=i, out_channels=channels, gamma_key=f"b{i}.weight",
                     param_keys=tuple(f"b{i}.{p}" for p in BN_PARAMS))
        graph.connect(f"b{i - 1}" if i else "x", f"b{i}")
    graph.order()
    return graph
