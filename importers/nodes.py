"""What both importers (ATen and Keras) share: unique node names and node attributes.

Node names are the framework's layer paths; a path used again (a module called twice, a
functional op repeated inside one block) gets ``_1``, ``_2``, ... as torch.fx does.
The attribute constructors write DESIGN section 1's node schema in one place.
"""

from __future__ import annotations

from typing import Any


class Namer:
    """Unique node names in time linear in the number of names.

    >>> namer = Namer()
    >>> [namer.take("relu") for _ in range(3)] + [namer.take("relu_1")]
    ['relu', 'relu_1', 'relu_2', 'relu_1_1']
    """

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.next_index: dict[str, int] = {}

    def take(self, base: str) -> str:
        """``base`` if unused, else ``base_<n>`` for the smallest unused n above the last given."""
        name, n = base, self.next_index.get(base, 0)
        if name in self.used:
            n += 1
            name = f"{base}_{n}"
            while name in self.used:
                n += 1
                name = f"{base}_{n}"
        self.next_index[base] = n
        self.used.add(name)
        return name


def conv_attrs(in_channels: int, out_channels: int, groups: int, kernel: tuple[int, ...],
               stride: tuple[int, ...], in_spatial: tuple[int, ...], out_spatial: tuple[int, ...],
               bias: bool, transposed: bool, batch: int = 1) -> dict[str, Any]:
    """A conv node's attributes (DESIGN section 1); ``batch`` > 1 for a conv on a batch-folded
    tensor (windows, patches, pairs), whose MACs count once per folded batch element."""
    attrs = {"in_channels": int(in_channels), "out_channels": int(out_channels),
             "groups": int(groups), "kernel": tuple(kernel), "stride": tuple(stride),
             "in_spatial": tuple(in_spatial), "out_spatial": tuple(out_spatial),
             "bias": bool(bias), "transposed": bool(transposed)}
    if batch != 1:
        attrs["batch"] = int(batch)
    return attrs


def linear_attrs(in_features: int, out_features: int, rows: tuple[int, ...], bias: bool,
                 in_rows: tuple[int, ...] | None = None) -> dict[str, Any]:
    """A linear (dense) node's attributes; ``rows`` are the positions it is applied at
    (tokens, pixels, folded batch), without the batch axis of size 1."""
    return {"in_channels": int(in_features), "out_channels": int(out_features), "groups": 1,
            "kernel": (), "in_spatial": tuple(rows if in_rows is None else in_rows),
            "out_spatial": tuple(rows), "bias": bool(bias)}


def param_attrs(params: int, trainable: int | None = None) -> dict[str, int]:
    """The parameter counts an op owns (each tensor counted by the first op that uses it)."""
    return {"params": int(params), "trainable_params": int(params if trainable is None else trainable)}


def first_line(err: BaseException | str) -> str:
    """The first non-empty line of an error message (200 characters at most)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if lines:
        return lines[0][:200]
    return type(err).__name__ if isinstance(err, BaseException) else "no details"
