"""Matrix-product formulas both importers (ATen and Keras) share, one place per formula.

Each turns operand shapes (plain ints, batch included) into the ``(batch, m, k, n)`` tuples
an opaque node's ``matmuls`` attribute holds; MACs of a tuple = batch * m * k * n. It
imports no framework.
"""

from __future__ import annotations

import math


def matmul_dims(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``matmul(a, b)`` as (broadcast batch, m, k, n), with numpy's matmul broadcasting.

    Parameters
    ----------
    a, b : tuple of int
        The operands' shapes; a 1-D operand is a vector (m or n = 1).

    Returns
    -------
    tuple of int
        ``(batch, m, k, n)``: MACs = batch * m * k * n.

    Examples
    --------
    >>> matmul_dims((2, 1, 5, 7), (3, 7, 11))  # batch dims broadcast: 2*3
    (6, 5, 7, 11)
    >>> matmul_dims((5, 7), (7,))
    (1, 5, 7, 1)
    """
    batch = math.prod(max(x, y) for x, y in zip(a[:-2][::-1], b[:-2][::-1]))
    batch *= math.prod(a[:-2][: max(0, len(a) - len(b))]) * math.prod(b[:-2][: max(0, len(b) - len(a))])
    return (batch, a[-2] if len(a) > 1 else 1, a[-1], b[-1] if len(b) > 1 else 1)


def einsum_macs(equation: str, shapes: list[tuple[int, ...]]) -> int:
    """MACs of a two-operand einsum: the product of every index size.

    Parameters
    ----------
    equation : str
        ``"bqhd,bkhd->bhqk"``; spaces allowed, no ellipsis.
    shapes : list of tuple of int
        The operands' shapes, in the equation's order.

    Examples
    --------
    >>> einsum_macs("bqhd,bkhd->bhqk", [(1, 29, 4, 6), (1, 31, 4, 6)])  # b*q*h*d*k
    21576
    """
    sizes: dict[str, int] = {}
    for letters, shape in zip(equation.split("->")[0].replace(" ", "").split(","), shapes):
        sizes.update(zip(letters, shape))
    return math.prod(sizes.values())
