"""Local-window graphs of images (or any (C, H, W) signal), applied as a stencil.

Every pixel ``p = (y, x)`` is joined to every other pixel ``q = (y + dy, x + dx)``
with ``|dy|, |dx| <= radius`` inside the image (a 13 x 13 window for radius 6). The
weights are stored as one (H, W) map per offset, and products with (N, E) matrices
run as a stencil over those maps: no index list is ever built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from . import _stencil
from ._graph import Graph
from ._validation import check_positive_int, check_range, check_tensor, finite_nonnegative

__all__ = ["GridGraph", "grid_graph", "exp_distance_weight", "grid_offsets"]

WeightFn = Callable[[Tensor, Tensor], Tensor]


def grid_offsets(radius: int) -> list[tuple[int, int]]:
    """The (dy, dx) offsets of a window of ``radius``, row-major, centre excluded:
    ``(2 * radius + 1) ** 2 - 1`` of them. Offset ``o`` and offset ``K - 1 - o`` are
    opposite."""
    r = radius
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]


@dataclass(frozen=True, eq=False)
class GridGraph:
    """A local-window graph over an H x W grid (N = H * W nodes, row-major).

    Attributes:
        weights: (K, H, W), ``K = (2 * radius + 1) ** 2 - 1``: one weight map per
            offset; ``weights[o, y, x]`` is the weight of the edge from pixel (y, x)
            to pixel ``(y + dy_o, x + dx_o)`` (offsets of :func:`grid_offsets`),
            0 where that pixel is outside the grid.
        radius: the window radius.
        scale: optional (N,) ``s``; when set the graph is
            ``W[p, q] = (weights[o, p] * s[p]) * s[q]`` (how :func:`sym_normalize`
            represents ``D^-1/2 W D^-1/2`` without a second copy of the weights).

    There are no self-loops. Use :meth:`matmul` (``W @ Z``), :meth:`operator`,
    :meth:`to_graph` or :meth:`to_sparse_coo` (for tests and small grids).
    """

    weights: Tensor
    radius: int
    scale: Tensor | None = None

    def __post_init__(self) -> None:
        r = check_positive_int("radius", self.radius)
        w = check_tensor("weights", self.weights, dims=("K", "H", "W"), floating=True)
        if w.size(0) != (2 * r + 1) ** 2 - 1:
            raise ValueError(
                f"weights must have (2 * radius + 1) ** 2 - 1 = {(2 * r + 1) ** 2 - 1} offset "
                f"maps for radius {r}, got {w.size(0)}"
            )
        if self.scale is not None:
            s = check_tensor("scale", self.scale, dims=("N",), floating=True)
            if s.numel() != w.size(1) * w.size(2) or s.device != w.device:
                raise ValueError(
                    f"scale must be ({w.size(1) * w.size(2)},) on {w.device}, "
                    f"got {tuple(s.shape)} on {s.device}"
                )

    @property
    def height(self) -> int:
        return int(self.weights.size(1))

    @property
    def width(self) -> int:
        return int(self.weights.size(2))

    @property
    def num_nodes(self) -> int:
        return self.height * self.width

    @property
    def device(self) -> torch.device:
        return self.weights.device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.dtype

    @cached_property
    def offsets(self) -> list[tuple[int, int]]:
        return grid_offsets(self.radius)

    @cached_property
    def is_mirrored(self) -> bool:
        """Whether the weights are exactly symmetric, ``weights[o, p] ==
        weights[opposite(o), p + o]`` (checked once; the stencil kernels then read half
        of them). The scale, when set, keeps W symmetric."""
        return _stencil.is_mirrored(self)

    def to(self, device: torch.device | str | int | None = None, dtype: torch.dtype | None = None) -> GridGraph:
        """The graph on ``device`` / in ``dtype`` (weights and scale; tensors already
        there are shared, not copied)."""
        scale = None if self.scale is None else self.scale.to(device=device, dtype=dtype)
        return GridGraph(self.weights.to(device=device, dtype=dtype), self.radius, scale)

    def materialize(self) -> GridGraph:
        """The same graph with the scale folded into the weights (``scale=None``)."""
        if self.scale is None:
            return self
        return GridGraph(_stencil.scaled_weights(self), self.radius)

    def degree(self) -> Tensor:
        """(N,) row sums of W."""
        return self.materialize().weights.sum(dim=0).reshape(-1)

    def operator(self, dtype: torch.dtype | None = None, *, kernel: str = "auto") -> Callable[[Tensor], Tensor]:
        """``z -> W @ z`` prepared once for repeated products with (N, E) ``z`` of
        ``dtype`` (default the graph's); what the solvers use. See :meth:`matmul`."""
        return _stencil.StencilOperator(self, dtype or self.dtype, kernel)

    def matmul(self, z: Tensor, *, kernel: str = "auto") -> Tensor:
        """``W @ z`` for ``z`` (N, E) as a stencil; returns (N, E) in z's dtype.

        ``kernel``: ``"numba"`` (compiled CPU loop, columns innermost), ``"torch"``
        (one shifted multiply-add per offset, any device) or ``"auto"`` (numba on
        CPU when available, else torch). Both give the same result to float rounding.
        For many products with one graph, :meth:`operator` prepares the weights once.
        """
        z = check_tensor("z", z, dims=("N", "E"), floating=True)
        if z.size(0) != self.num_nodes:
            raise ValueError(f"z must have N={self.num_nodes} rows for this grid, got {z.size(0)}")
        if z.device != self.device:
            raise ValueError(f"z must be on the graph's device {self.device}, got {z.device}")
        return self.operator(z.dtype, kernel=kernel)(z)

    def to_graph(self) -> Graph:
        """The explicit edge list (for tests and small grids): every in-grid offset
        pair is an edge, weight 0 edges included."""
        # Per-pixel masks rather than offset_blocks on purpose: the tests compare the
        # stencil (built on offset_blocks) with this matrix, so it is found another way.
        h, w = self.height, self.width
        ys, xs = torch.meshgrid(torch.arange(h, device=self.device), torch.arange(w, device=self.device), indexing="ij")
        rows, cols, vals = [], [], []
        weights = self.materialize().weights
        for o, (dy, dx) in enumerate(self.offsets):
            valid = (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)
            p = (ys * w + xs)[valid]
            rows.append(p)
            cols.append(p + dy * w + dx)
            vals.append(weights[o][valid])
        return Graph(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals), self.num_nodes)

    def to_sparse_coo(self) -> Tensor:
        """As a torch sparse COO (N, N) tensor."""
        return self.to_graph().to_sparse_coo()

    def __repr__(self) -> str:
        return (
            f"GridGraph(height={self.height}, width={self.width}, radius={self.radius}, "
            f"normalized={self.scale is not None}, dtype={self.dtype}, device={self.device})"
        )


def exp_distance_weight(tau: float) -> WeightFn:
    """The weight ``exp(-||f_p - f_q||_2 / tau)`` (LPOSS+ colour affinity, tau 0.01
    on Lab / (100, 128, 128) colours)."""
    tau = check_range("tau", tau, low=0.0, low_open=True)

    def weight(fp: Tensor, fq: Tensor) -> Tensor:
        return torch.exp(-(fp - fq).square().sum(0).sqrt() / tau)

    weight.__name__ = f"exp_distance_weight(tau={tau:g})"
    return weight


def grid_graph(signal: Tensor, radius: int, weight: WeightFn | float = 0.01) -> GridGraph:
    """The local-window graph of a (C, H, W) signal.

    Args:
        signal: (C, H, W) floating, e.g. an image's colours.
        radius: window radius; pixels with ``|dy|, |dx| <= radius`` are joined
            ((2r+1)^2 - 1 neighbours inside the image, 168 for radius 6).
        weight: a symmetric callable ``weight(f_p, f_q) -> w`` taking the (C, h, w)
            features of aligned pixel blocks and returning (h, w) non-negative
            weights, or a float ``tau`` for :func:`exp_distance_weight`. Each
            unordered pair is computed once and mirrored, so W is exactly symmetric.

    Returns:
        A :class:`GridGraph` in the signal's dtype and on its device. Weights below
        the dtype's smallest normal number (``torch.finfo(dtype).tiny``, e.g. where
        ``exp(-d / tau)`` underflows) are 0: no denormal enters the products.
    """
    signal = check_tensor("signal", signal, dims=("C", "H", "W"), floating=True, finite=True, nonempty=True)
    radius = check_positive_int("radius", radius)
    _, h, w = signal.shape
    offsets = grid_offsets(radius)
    k = len(offsets)
    if not callable(weight):
        tau = check_range("tau", weight, low=0.0, low_open=True)
        if signal.device.type == "cpu" and _stencil.numba_available():
            return _exp_distance_grid_numba(signal, radius, tau)
        weight = exp_distance_weight(tau)
    weights = torch.zeros(k, h, w, dtype=signal.dtype, device=signal.device)
    # offsets before the centre only; o and k-1-o are opposite, so mirror each block
    for o, p, q in offset_blocks(offsets[: k // 2], h, w):
        wo = weight(signal[:, p[0], p[1]], signal[:, q[0], q[1]])
        if not isinstance(wo, Tensor) or wo.shape != weights[o][p].shape:
            got = tuple(wo.shape) if isinstance(wo, Tensor) else type(wo).__name__
            raise ValueError(f"weight must map two (C, h, w) blocks to (h, w) weights, got {got}")
        weights[o][p] = wo
        weights[k - 1 - o][q] = weights[o][p]
    if finite_nonnegative(weights) != (True, True):
        raise ValueError("weight must return finite non-negative weights")
    _stencil.flush_denormals(weights, nonnegative=True)
    _stencil.mark_mirrored(weights)
    return GridGraph(weights, radius)


def _exp_distance_grid_numba(signal: Tensor, radius: int, tau: float) -> GridGraph:
    """:func:`grid_graph` with a float tau in one compiled pass (CPU)."""
    from . import _numba_kernels

    signal = signal.contiguous()
    weights = torch.zeros((2 * radius + 1) ** 2 - 1, signal.size(1), signal.size(2), dtype=signal.dtype)
    scalar = signal.numpy().dtype.type
    _numba_kernels.exp_distance_grid(signal.numpy(), radius, scalar(tau), scalar(torch.finfo(signal.dtype).tiny),
                                     weights.numpy())
    _stencil.mark_mirrored(weights)
    return GridGraph(weights, radius)


def offset_blocks(
    offsets: list[tuple[int, int]], height: int, width: int
) -> Iterator[tuple[int, tuple[slice, slice], tuple[slice, slice]]]:
    """For each offset ``o`` whose window fits the grid: ``(o, p, q)`` with ``p`` the
    (rows, cols) slices of the pixels whose neighbour at offset o is inside the grid
    and ``q`` the slices of those neighbours (aligned with ``p``)."""
    for o, (dy, dx) in enumerate(offsets):
        ys, xs = _valid_slices(dy, height), _valid_slices(dx, width)
        if ys is not None and xs is not None:
            yield o, (ys[0], xs[0]), (ys[1], xs[1])


def _valid_slices(d: int, size: int) -> tuple[slice, slice] | None:
    """Slices (source, shifted) of the positions ``p`` with ``p + d`` in ``[0, size)``."""
    if abs(d) >= size:
        return None
    return slice(max(0, -d), size - max(0, d)), slice(max(0, d), size - max(0, -d))
