"""Local-window graphs of images (or any (C, H, W) signal), applied as a stencil.

Every pixel ``p = (y, x)`` is joined to every other pixel ``q = (y + dy, x + dx)``
with ``|dy|, |dx| <= radius`` inside the image (a 13 x 13 window for radius 6). The
weights are stored as one (H, W) map per offset, and products with (N, E) matrices
run as a stencil over those maps: no index list is ever built. :class:`GridGraph`
implements :class:`~graphprop.PropagationGraph`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor

from . import _stencil
from ._cache import cached_derived
from ._graph import Graph, _check_block
from ._protocol import GraphOperator, WeightsMixin
from ._validation import check_positive_int, check_range, check_tensor, finite_nonnegative
from ._window import grid_offsets, offset_blocks

__all__ = ["GridGraph", "grid_graph", "exp_distance_weight", "grid_offsets"]

WeightFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class GridGraph(WeightsMixin):
    """A local-window graph over an H x W grid (N = H * W nodes, row-major).

    Implements :class:`~graphprop.PropagationGraph`. There are no self-loops. Use
    :meth:`matmul` (``W @ Z``), :meth:`operator`, :meth:`to_graph` or
    :meth:`to_sparse_coo` (for tests and small grids).

    Parameters
    ----------
    weights : Tensor
        (K, H, W) floating, ``K = (2 * radius + 1) ** 2 - 1``: one weight map per
        offset; ``weights[o, y, x]`` is the weight of the edge from pixel (y, x) to
        pixel ``(y + dy_o, x + dx_o)`` (offsets of :func:`grid_offsets`), 0 where that
        pixel is outside the grid.
    radius : int
        The window radius, >= 1.
    scale : Tensor, optional
        (N,) ``s``; when set the graph is ``W[p, q] = (weights[o, p] * s[p]) * s[q]``
        (how :func:`~graphprop.sym_normalize` represents ``D^-1/2 W D^-1/2`` without a
        second copy of the weights).

    Raises
    ------
    TypeError
        If ``radius`` is not an integer or a tensor is not floating.
    ValueError
        If the shapes do not match ``radius`` or ``scale`` is on another device.
    """

    weights: Tensor
    radius: int
    scale: Tensor | None = None
    auto_direct: ClassVar[bool] = False

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
        """H, the grid's height."""
        return int(self.weights.size(1))

    @property
    def width(self) -> int:
        """W, the grid's width."""
        return int(self.weights.size(2))

    @property
    def num_nodes(self) -> int:
        """N = H * W."""
        return self.height * self.width

    @property
    def weight_values(self) -> Tensor:
        """(K, H, W) the stored weight maps, ``weights`` (before the scale)."""
        return self.weights

    @cached_property
    def offsets(self) -> list[tuple[int, int]]:
        """The K (dy, dx) offsets, :func:`grid_offsets` of the radius."""
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

    def fold_scale(self) -> GridGraph:
        """The same graph with the scale folded into the weights.

        Returns
        -------
        GridGraph
            ``scale=None`` and weights ``(weights[o, p] * s[p]) * s[q]``; ``self`` when
            there is no scale. Still a stencil: no matrix is built.
        """
        if self.scale is None:
            return self
        return GridGraph(_stencil.scaled_weights(self), self.radius)

    def materialize(self) -> GridGraph:
        """Deprecated alias of :meth:`fold_scale` (it builds no matrix; :meth:`to_graph` does)."""
        warnings.warn("GridGraph.materialize() is deprecated; use GridGraph.fold_scale()",
                      DeprecationWarning, stacklevel=2)
        return self.fold_scale()

    def detach(self) -> GridGraph:
        """The graph with tensors that do not require grad (``self`` when none does)."""
        if not (self.weights.requires_grad or (self.scale is not None and self.scale.requires_grad)):
            return self
        scale = None if self.scale is None else self.scale.detach()
        return GridGraph(self.weights.detach(), self.radius, scale)

    # ------------------------------------------------------------ operations
    def degree(self) -> Tensor:
        """Row sums of W (out-degrees).

        Returns
        -------
        Tensor
            (N,) ``d[p] = sum_q W[p, q]``, in the grid's dtype.
        """
        return self.fold_scale().weights.sum(dim=0).reshape(-1)

    def is_symmetric(self) -> bool:
        """Whether ``W == W^T``.

        Returns
        -------
        bool
            True when the weights are mirrored exactly (:attr:`is_mirrored`, known
            without a pass for the graphs :func:`grid_graph` builds), else whether
            ``weights[o, p]`` equals ``weights[opposite(o), p + o]`` within 16 units of
            float rounding for every offset (the scale folded in; compared slice by
            slice, cached on the graph until its tensors are edited in place).
        """
        if self.is_mirrored:
            return True
        return cached_derived(self, "symmetric", (self.weights, self.scale),
                              lambda: _within_rounding_of_mirror(self.fold_scale()))

    def symmetrize(self) -> GridGraph:
        """``W + W^T``: ``W^T[p, p + o] = W[p + o, p]``, the opposite offset's weight read at the neighbour.

        Returns
        -------
        GridGraph
            Without a scale (folded in first).
        """
        base = self.fold_scale()
        k = len(base.offsets)
        weights = base.weights.clone()
        for o, p, q in offset_blocks(base.offsets, base.height, base.width):
            weights[o][p] += base.weights[k - 1 - o][q]
        return GridGraph(weights, base.radius)

    def remove_self_loops(self) -> GridGraph:
        """A grid graph has no self-loops: ``self``."""
        return self

    def sym_normalize(self) -> GridGraph:
        """``D^-1/2 W D^-1/2`` with ``D`` the row sums of W; a zero degree counts as 1.

        Returns
        -------
        GridGraph
            The weights with the scale folded in, kept as they are, and
            ``scale = d^-1/2`` (computed in the stencil, in the grid's dtype).

        Raises
        ------
        ValueError
            If a weight is negative.
        """
        base = self.fold_scale()
        if not finite_nonnegative(base.weights)[1]:
            raise ValueError("graph must have non-negative edge weights to be normalised")
        return GridGraph(base.weights, base.radius, _inv_sqrt_degree(base.degree()))

    def _transposed(self) -> GridGraph:
        """``W^T``: ``W^T[p, p + o] = W[p + o, p]``, the opposite offset's weight read at the neighbour."""
        base = self.fold_scale()
        k = len(base.offsets)
        weights = torch.zeros_like(base.weights)
        for o, p, q in offset_blocks(base.offsets, base.height, base.width):
            weights[o][p] = base.weights[k - 1 - o][q]
        return GridGraph(weights, base.radius)

    # --------------------------------------------------------------- products
    def operator(self, dtype: torch.dtype | None = None, *, kernel: str = "auto") -> GraphOperator:
        """``z -> W @ z`` prepared once for repeated products with (N, E) ``z``.

        Parameters
        ----------
        dtype : torch.dtype, optional
            The dtype of the blocks it will be applied to (default the graph's).
        kernel : {"auto", "numba", "torch"}
            See :meth:`matmul`.

        Returns
        -------
        GraphOperator
            A :class:`~graphprop._stencil.StencilOperator` (``column_multiple`` 16 for
            the numba kernels, 1 for torch); the contract of
            :class:`~graphprop.GraphOperator`.
        """
        return _stencil.StencilOperator(self, dtype or self.dtype, kernel)

    def propagation_operator(self, dtype: torch.dtype, *, normalize: bool) -> GraphOperator:
        """``z -> P @ z`` with label propagation's ``P = W_hat^T`` (rows = receiving pixels).

        Parameters
        ----------
        dtype : torch.dtype
            The dtype of the blocks it will be applied to.
        normalize : bool
            True: ``W_hat`` is :meth:`sym_normalize` of ``W^T`` (in-degrees, a zero
            in-degree counted as 1); False: ``W_hat = W``.

        Returns
        -------
        GraphOperator
            The stencil of ``W`` itself when W is symmetric, else of its transpose.
        """
        graph = self if self.is_symmetric() else self._transposed()
        return (graph.sym_normalize() if normalize else graph).operator(dtype)

    def matmul(self, z: Tensor, out: Tensor | None = None, *, kernel: str = "auto") -> Tensor:
        """``W @ z`` as a stencil.

        Parameters
        ----------
        z : Tensor
            (N, E) floating, on the graph's device.
        out : Tensor, optional
            (N, E) of z's dtype, not aliasing ``z``: written and returned.
        kernel : {"auto", "numba", "torch"}
            ``"numba"`` (compiled CPU loop, columns innermost), ``"torch"`` (one
            shifted multiply-add per offset, any device) or ``"auto"`` (numba on CPU
            when available, else torch). Both give the same result to float rounding.

        Returns
        -------
        Tensor
            (N, E) in z's dtype. For many products with one graph, :meth:`operator`
            prepares the weights once.

        Raises
        ------
        TypeError
            If ``z`` is not a floating tensor.
        ValueError
            If ``z`` is not (N, E), is on another device, or ``kernel`` is unknown.
        """
        z = _check_block(z, self.num_nodes, self.device)
        return self.operator(z.dtype, kernel=kernel)(z, out=out)

    def to_graph(self) -> Graph:
        """The explicit edge list (for tests and small grids): every in-grid offset
        pair is an edge, weight 0 edges included."""
        # Per-pixel masks rather than offset_blocks on purpose: the tests compare the
        # stencil (built on offset_blocks) with this matrix, so it is found another way.
        h, w = self.height, self.width
        ys, xs = torch.meshgrid(torch.arange(h, device=self.device), torch.arange(w, device=self.device), indexing="ij")
        rows, cols, vals = [], [], []
        weights = self.fold_scale().weights
        for o, (dy, dx) in enumerate(self.offsets):
            valid = (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)
            p = (ys * w + xs)[valid]
            rows.append(p)
            cols.append(p + dy * w + dx)
            vals.append(weights[o][valid])
        return Graph(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals), self.num_nodes)

    def to_sparse_coo(self) -> Tensor:
        """As a torch sparse COO (N, N) tensor (for tests and small grids)."""
        return self.to_graph().to_sparse_coo()

    def __repr__(self) -> str:
        return (
            f"GridGraph(height={self.height}, width={self.width}, radius={self.radius}, "
            f"normalized={self.scale is not None}, dtype={self.dtype}, device={self.device})"
        )


def exp_distance_weight(tau: float) -> WeightFn:
    """The weight function ``exp(-||f_p - f_q||_2 / tau)``.

    The LPOSS+ colour affinity: tau 0.01 on Lab / (100, 128, 128) colours.

    Parameters
    ----------
    tau : float
        > 0, the distance scale.

    Returns
    -------
    callable
        ``weight(f_p, f_q) -> w``: (C, h, w) features of aligned pixel blocks to (h, w)
        weights, for :func:`grid_graph`.

    Raises
    ------
    TypeError
        If ``tau`` is not a number.
    ValueError
        If ``tau <= 0``.
    """
    tau = check_range("tau", tau, low=0.0, low_open=True)

    def weight(fp: Tensor, fq: Tensor) -> Tensor:
        return torch.exp(-(fp - fq).square().sum(0).sqrt() / tau)

    weight.__name__ = f"exp_distance_weight(tau={tau:g})"
    return weight


_NO_WEIGHT = object()  # grid_graph's deprecated ``weight=`` keyword, not given


def grid_graph(signal: Tensor, radius: int, tau: float | None = None, *, weight_fn: WeightFn | None = None,
               weight: WeightFn | float | object = _NO_WEIGHT) -> GridGraph:
    """The local-window graph of a (C, H, W) signal.

    Parameters
    ----------
    signal : Tensor
        (C, H, W) floating, finite, e.g. an image's colours.
    radius : int
        Window radius, >= 1; pixels with ``|dy|, |dx| <= radius`` are joined
        ((2r+1)^2 - 1 neighbours inside the image, 168 for radius 6).
    tau : float, optional
        ``tau`` > 0 of :func:`exp_distance_weight`, the weight
        ``exp(-||f_p - f_q|| / tau)`` (default 0.01).
    weight_fn : callable, optional
        Another weight, given instead of ``tau``: a symmetric ``weight_fn(f_p, f_q) -> w``
        taking the (C, h, w) features of aligned pixel blocks and returning (h, w)
        non-negative weights. Each unordered pair is computed once and mirrored, so W is
        exactly symmetric.
    weight : float or callable, optional
        Deprecated name of ``tau`` / ``weight_fn`` (it took either), given alone.

    Returns
    -------
    GridGraph
        In the signal's dtype and on its device. Weights below the dtype's smallest
        normal number (``torch.finfo(dtype).tiny``, e.g. where ``exp(-d / tau)``
        underflows) are 0: no denormal enters the products.

    Raises
    ------
    TypeError
        If ``signal`` is not a floating tensor, ``radius`` not an integer, ``tau``
        not a number, ``weight_fn`` not callable, or it returns no tensor.
    ValueError
        For a wrong shape, NaN/inf in ``signal``, ``radius < 1``, ``tau <= 0``, two of
        ``tau``, ``weight_fn`` and ``weight`` given, or weights of the wrong shape,
        negative or not finite.

    Warns
    -----
    DeprecationWarning
        For ``weight=``, and for a weight function given as the third argument (its first
        meaning): it is taken as ``weight_fn``.
    """
    given_tau, weight_fn = _weight_arguments(tau, weight_fn, weight)
    signal = check_tensor("signal", signal, dims=("C", "H", "W"), floating=True, finite=True, nonempty=True)
    radius = check_positive_int("radius", radius)
    _, h, w = signal.shape
    offsets = grid_offsets(radius)
    k = len(offsets)
    if weight_fn is None:
        tau_value = check_range("tau", given_tau, low=0.0, low_open=True)
        compiled = signal.dtype in (torch.float32, torch.float64) and _stencil.numba_available()  # no 16-bit
        if signal.device.type == "cpu" and compiled:
            return _exp_distance_grid_numba(signal, radius, tau_value)
        weight_fn = exp_distance_weight(tau_value)
    weights = torch.zeros(k, h, w, dtype=signal.dtype, device=signal.device)
    # offsets before the centre only; o and k-1-o are opposite, so mirror each block
    for o, p, q in offset_blocks(offsets[: k // 2], h, w):
        wo = weight_fn(signal[:, p[0], p[1]], signal[:, q[0], q[1]])
        if not isinstance(wo, Tensor):
            raise TypeError(f"weight_fn must map two (C, h, w) blocks to (h, w) weight tensors, "
                            f"got {type(wo).__name__}")
        if wo.shape != weights[o][p].shape:
            raise ValueError(f"weight_fn must map two (C, h, w) blocks to (h, w) weights, "
                             f"got {tuple(wo.shape)}")
        weights[o][p] = wo
        weights[k - 1 - o][q] = weights[o][p]
    if finite_nonnegative(weights) != (True, True):
        raise ValueError("weight_fn must return finite non-negative weights")
    _stencil.flush_denormals(weights, nonnegative=True)
    _stencil.mark_mirrored(weights)
    return GridGraph(weights, radius)


def _weight_arguments(tau: object, weight_fn: object, weight: object) -> tuple[object, WeightFn | None]:
    """:func:`grid_graph`'s ``(tau, weight_fn)`` from what was given: the deprecated forms (``weight=``, a
    function as the third argument) warned of and mapped, two of them together refused, a ``weight_fn``
    checked to be callable, tau's default filled in."""
    if weight is not _NO_WEIGHT:
        warnings.warn("grid_graph(weight=...) is deprecated; a number is tau (grid_graph(signal, radius, tau)), "
                      "a function weight_fn (grid_graph(signal, radius, weight_fn=f))",
                      DeprecationWarning, stacklevel=3)
        if tau is not None or weight_fn is not None:
            raise ValueError("grid_graph: give one of tau, weight_fn and the deprecated weight, not two")
        tau = weight
    elif callable(tau):
        warnings.warn("grid_graph(signal, radius, f) with a weight function is deprecated; pass it as "
                      "weight_fn=f (the third argument is tau)", DeprecationWarning, stacklevel=3)
    if callable(tau):
        if weight_fn is not None:
            raise ValueError("grid_graph: give one of tau and weight_fn, not both (got a function for each)")
        weight_fn, tau = tau, None
    if weight_fn is not None:
        if not callable(weight_fn):
            raise TypeError(f"weight_fn must be a callable weight_fn(f_p, f_q) -> w, got {type(weight_fn).__name__}")
        if tau is not None:
            raise ValueError(f"grid_graph: give one of tau and weight_fn, not both (got tau={tau!r} and a weight_fn)")
    return (0.01 if tau is None else tau), weight_fn


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


def _inv_sqrt_degree(d: Tensor) -> Tensor:
    """``d^-1/2`` with a zero degree counted as 1."""
    return torch.where(d > 0, d, torch.ones_like(d)).sqrt().reciprocal()


def _within_rounding_of_mirror(grid: GridGraph) -> bool:
    """``weights[o, p] == weights[opposite(o), p + o]`` for every offset, each within 16
    units of float rounding of its mirror, compared slice by slice (no copy); the scale
    is not read (pass a graph without one)."""
    k = len(grid.offsets)
    rtol = 16 * torch.finfo(grid.dtype).eps
    for o, p, q in offset_blocks(grid.offsets[: k // 2], grid.height, grid.width):
        a, b = grid.weights[o][p], grid.weights[k - 1 - o][q]
        if not bool(((a - b).abs() <= rtol * torch.maximum(a.abs(), b.abs())).all()):
            return False
    return True
