"""The geometry of local windows on an H x W grid: offsets and the aligned blocks they join.

A leaf module (imports nothing from the package), shared by :mod:`._grid` (the graph),
:mod:`._stencil` (its kernels) and the solvers, so that none of them imports another
to find these.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["grid_offsets", "offset_blocks"]

Block = tuple[slice, slice]


def grid_offsets(radius: int) -> list[tuple[int, int]]:
    """The (dy, dx) offsets of a window of ``radius``, row-major, centre excluded.

    Parameters
    ----------
    radius : int
        The window radius r.

    Returns
    -------
    list of (int, int)
        ``(2 * radius + 1) ** 2 - 1`` offsets ``(dy, dx)`` with ``|dy|, |dx| <= r``.
        Offset ``o`` and offset ``K - 1 - o`` are opposite.
    """
    r = radius
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]


def offset_blocks(offsets: list[tuple[int, int]], height: int, width: int) -> Iterator[tuple[int, Block, Block]]:
    """The aligned pixel blocks each offset joins inside a ``height`` x ``width`` grid.

    Parameters
    ----------
    offsets : list of (int, int)
        (dy, dx) offsets, e.g. :func:`grid_offsets`.
    height, width : int
        The grid's size.

    Yields
    ------
    (o, p, q)
        For each offset ``o`` whose window fits the grid: ``p`` the (rows, cols)
        slices of the pixels whose neighbour at offset ``o`` is inside the grid and
        ``q`` the slices of those neighbours (aligned with ``p``).
    """
    for o, (dy, dx) in enumerate(offsets):
        ys, xs = _valid_slices(dy, height), _valid_slices(dx, width)
        if ys is not None and xs is not None:
            yield o, (ys[0], xs[0]), (ys[1], xs[1])


def _valid_slices(d: int, size: int) -> tuple[slice, slice] | None:
    """Slices (source, shifted) of the positions ``p`` with ``p + d`` in ``[0, size)``."""
    if abs(d) >= size:
        return None
    return slice(max(0, -d), size - max(0, d)), slice(max(0, d), size - max(0, -d))
