"""Stencil kernels for :class:`~graphprop.GridGraph` products ``out = W @ z``.

Kernels that tests keep equal to float rounding (and to the explicit sparse matrix):

- ``numba``, symmetric graph (every graph :func:`~graphprop.grid_graph` and
  :func:`~graphprop.sym_normalize` make): only the K/2 forward offsets' weights are
  kept, (K/2, H, W) with the scale folded in; pixel ``p`` gathers
  ``w[o, p] z[p + o]`` and ``w[o, p - o] z[p - o]`` (``w_pq = w_qp``), so each
  output row is written by one thread, no races. Parallel over image rows (each
  thread slides down a contiguous band, the window's rows of ``z`` in cache), blocks
  of 4 pixels x 48 columns whose accumulators stay in registers over a window row
  (explicit AVX-512 vectors, :mod:`._simd`); columns padded to a multiple of 16.
  :meth:`StencilOperator.shifted_dot` fuses the CG's ``q = p - alpha W p`` and
  ``p . q`` into the same pass.
- ``numba``, any other grid graph: all K weights pixel-major, columns innermost.
- ``torch``: one shifted multiply-add per offset on (H, W, E) views, any device
  (CUDA included); for a symmetric graph also half the weights, each forward offset
  applied both ways.

Denormals: every weight a kernel reads is ``(weights[o, p] * s[p]) * s[q]`` (``s`` = 1
for an unnormalised graph; that order keeps float32 finite when degrees are
denormal), computed once, with values below the smallest normal number of the
working dtype flushed to 0 (:func:`flush_denormals`): on CPUs that take a slow path
for denormal operands (Intel) they would otherwise slow every product, and they are
below float rounding of any sum they enter.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._optional import importable
from ._validation import check_choice, widened
from ._window import offset_blocks

if TYPE_CHECKING:  # pragma: no cover
    from ._grid import GridGraph

KERNELS = ("auto", "numba", "torch")
_COLUMN_MULTIPLE = 16  # float32 lanes of an AVX-512 register


def numba_available() -> bool:
    """Whether the numba kernel can be used (numba imports)."""
    return importable("numba")


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """The kernel ``"auto"`` stands for on ``device`` (numba on CPU when available)."""
    kernel = check_choice("kernel", kernel, KERNELS)
    if kernel == "auto":
        return "numba" if device.type == "cpu" and numba_available() else "torch"
    if kernel == "numba" and device.type != "cpu":
        raise ValueError(f"kernel='numba' runs on CPU tensors, got a graph on {device}")
    return kernel


def flush_denormals(t: Tensor, *, nonnegative: bool = False) -> Tensor:
    """``t`` with the entries whose magnitude is below ``torch.finfo(t.dtype).tiny`` (the
    smallest normal number: denormals) set to 0, in place; returns ``t``. For weights
    of any graph form before a solver uses them. ``nonnegative=True`` (t known >= 0):
    one pass instead of three."""
    tiny = torch.finfo(t.dtype).tiny
    if nonnegative:  # keeps x > largest denormal, i.e. x >= tiny
        largest_denormal = float(torch.tensor(tiny, dtype=t.dtype).nextafter(torch.tensor(0, dtype=t.dtype)))
        return torch.threshold_(t, largest_denormal, 0)
    return t.masked_fill_(t.abs() < tiny, 0)


# weight tensors known to be mirrored (built so), with the version they had then: the
# graphs sym_normalize / to / fold_scale derive from one share its answer for free
_MIRRORED: dict[int, tuple[weakref.ref[Tensor], int]] = {}


def mark_mirrored(weights: Tensor) -> None:
    """Record that (K, H, W) ``weights`` are mirrored as they are now (see :func:`is_mirrored`);
    not for inference tensors, which have no version counter to notice a later change."""
    if weights.is_inference():
        return
    key = id(weights)
    _MIRRORED[key] = (weakref.ref(weights, lambda _: _MIRRORED.pop(key, None)), weights._version)


def _known_mirrored(weights: Tensor) -> bool:
    ref, version = _MIRRORED.get(id(weights), (None, -1))
    return ref is not None and ref() is weights and not weights.is_inference() and weights._version == version


def is_mirrored(grid: GridGraph) -> bool:
    """Whether ``weights[o, p] == weights[opposite(o), p + o]`` exactly for every in-grid
    pair (W symmetric, the form :func:`~graphprop.grid_graph` builds): the symmetric
    kernels read the forward half only. Checked (one compiled pass on CPU) unless the
    weights were built mirrored and not changed since."""
    weights = grid.weights
    if _known_mirrored(weights):
        return True
    if weights.device.type == "cpu" and numba_available():
        from . import _numba_kernels

        result = bool(_numba_kernels.mirrored(widened(weights).contiguous().numpy(), grid.radius))
    else:
        k = len(grid.offsets)
        blocks = offset_blocks(grid.offsets[: k // 2], grid.height, grid.width)
        result = all(torch.equal(weights[o][p], weights[k - 1 - o][q]) for o, p, q in blocks)
    if result:
        mark_mirrored(weights)
    return result


class StencilOperator:
    """``z -> W @ z`` for a fixed grid graph, prepared once for repeated products.

    The solvers call it every iteration; a :class:`~graphprop.GraphOperator` (see its
    contract: ``out`` must not alias ``z``, the input is never written).

    Parameters
    ----------
    grid : GridGraph
        The graph.
    dtype : torch.dtype
        The dtype of the (N, E) ``z`` it will be applied to.
    kernel : {"auto", "numba", "torch"}
        The kernel (``"auto"``: numba on CPU when available, else torch).

    Attributes
    ----------
    kernel : str
        The kernel used.
    symmetric : bool
        Whether the forward-half (symmetric) kernels are used.
    column_multiple : int
        The column count the kernel wants the block padded to: 16 for numba (whole
        AVX-512 vectors; the CG pads its state to it), 1 for torch.
    weights : Tensor
        The prepared weights the kernel reads, flushed of denormals: (K/2, H, W)
        forward half when ``symmetric``, else (H, W, K) pixel-major (numba) or
        (K, H, W) (torch); the scale folded in.
    """

    def __init__(self, grid: GridGraph, dtype: torch.dtype, kernel: str = "auto") -> None:
        self.kernel = resolve_kernel(kernel, grid.device)
        # columns the numba loops vectorise without a scalar tail; the solvers pad to it
        self.column_multiple = _COLUMN_MULTIPLE if self.kernel == "numba" else 1
        self.grid = grid
        self.radius = grid.radius
        self.symmetric = grid.is_mirrored
        if self.symmetric:
            self.weights = _forward_half(grid, dtype, numba=self.kernel == "numba")
        elif self.kernel == "numba":
            # one pixel's weights contiguous, the scale folded in: (H, W, K)
            self.weights = flush_denormals(_scaled_pixel_major(grid, dtype))
        else:
            base = grid.to(dtype=dtype)
            self.weights = flush_denormals(base.fold_scale().weights.clone())

    def __call__(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        """z: (N, E) -> (N, E), written into ``out`` when given."""
        if self.kernel == "torch":
            result = _matmul_torch(self.grid, self.weights, self.symmetric, z)
            return result if out is None else out.copy_(result)
        zp, target = self._padded(z, out)
        self._numba(zp, target, None, 0.0)
        result = target if target.size(1) == z.size(1) else target[:, : z.size(1)]
        return result if out is None or result is out else out.copy_(result)

    def shifted_dot(self, p: Tensor, alpha: float, q: Tensor) -> Tensor:
        """One CG step's work on ``A = I - alpha W``: ``q = p - alpha W p`` (written into
        ``q``) and returns (E,) the column sums of ``p * q``, in one pass of the
        symmetric numba kernel (p, q (N, E) contiguous, E a multiple of 16), or as a
        product then two vector operations for the other kernels."""
        if self.kernel == "numba" and self.symmetric and self._aligned(p) and self._aligned(q):
            from . import _numba_kernels

            dots = p.new_empty(self.grid.height * _numba_kernels.tiles(self.grid.width, self.radius), p.size(1))
            _numba_kernels.symmetric_stencil(self.weights.numpy(), p.numpy(), q.numpy(), dots.numpy(),
                                             float(alpha), True, self.radius)
            return dots.sum(0)
        torch.add(p, self(p), alpha=-alpha, out=q)
        return (p * q).sum(0)

    def _aligned(self, t: Tensor) -> bool:
        return t.is_contiguous() and t.size(1) % _COLUMN_MULTIPLE == 0

    def _padded(self, z: Tensor, out: Tensor | None) -> tuple[Tensor, Tensor]:
        """z and the output buffer as contiguous (N, E') with E' the padded width."""
        n, e = z.shape
        padded = -(-e // _COLUMN_MULTIPLE) * _COLUMN_MULTIPLE
        if padded != e or not z.is_contiguous():  # pad: whole vectors in the loop
            zp = z.new_zeros(n, padded)
            zp[:, :e] = z
        else:
            zp = z
        if out is None or padded != e or not out.is_contiguous():
            return zp, torch.empty_like(zp)
        return zp, out

    def _numba(self, z: Tensor, out: Tensor, dots: Tensor | None, alpha: float) -> None:
        from . import _numba_kernels

        if self.symmetric:
            spare = z.new_empty(1, z.size(1))
            _numba_kernels.symmetric_stencil(self.weights.numpy(), z.numpy(), out.numpy(), spare.numpy(),
                                             alpha, False, self.radius)
        else:
            _numba_kernels.stencil(self.weights.numpy(), z.numpy(), out.numpy(), self.radius)


def _matmul_torch(grid: GridGraph, weights: Tensor, symmetric: bool, z: Tensor) -> Tensor:
    """W @ z from prepared weights: (K/2, H, W) forward half (``symmetric``: each offset
    applied both ways) or (K, H, W)."""
    h, w = grid.height, grid.width
    zi = z.reshape(h, w, -1)
    out = torch.zeros_like(zi)
    k = len(grid.offsets)
    if symmetric:
        for o, p, q in offset_blocks(grid.offsets[k // 2 :], h, w):
            wo = weights[o][p].unsqueeze(-1)
            out[p].addcmul_(wo, zi[q])
            out[q].addcmul_(wo, zi[p])
    else:
        for o, p, q in offset_blocks(grid.offsets, h, w):
            out[p].addcmul_(weights[o][p].unsqueeze(-1), zi[q])
    return out.reshape(z.shape)


def scaled_weights(grid: GridGraph) -> Tensor:
    """(K, H, W) weights with the graph's scale folded in: ``(w[o, p] * s[p]) * s[q]``
    (0 where q is outside the grid)."""
    assert grid.scale is not None
    s = grid.scale.view(grid.height, grid.width)
    out = torch.zeros_like(grid.weights)
    for o, p, q in offset_blocks(grid.offsets, grid.height, grid.width):
        out[o][p] = (grid.weights[o][p] * s[p]) * s[q]
    return out


def _scaled_pixel_major(grid: GridGraph, dtype: torch.dtype) -> Tensor:
    """(H, W, K) contiguous CPU weights in ``dtype`` with the scale folded in."""
    weights = grid.weights.to(dtype).contiguous()
    scale = _scale(grid, dtype)
    from . import _numba_kernels

    out = torch.empty(grid.height, grid.width, weights.size(0), dtype=dtype)
    _numba_kernels.pixel_major(weights.numpy(), scale.numpy(), out.numpy(), grid.radius)
    return out


def _scale(grid: GridGraph, dtype: torch.dtype) -> Tensor:
    if grid.scale is None:
        return torch.ones(grid.num_nodes, dtype=dtype, device=grid.device)
    return grid.scale.to(dtype).contiguous()


def _forward_half(grid: GridGraph, dtype: torch.dtype, *, numba: bool) -> Tensor:
    """(K/2, H, W) contiguous: the weights of the offsets after the centre in ``dtype``,
    ``(w[o, p] * s[p]) * s[q]``, 0 outside the grid, denormals flushed to 0."""
    k = len(grid.offsets)
    scale = _scale(grid, dtype)
    out = torch.zeros(k // 2, grid.height, grid.width, dtype=dtype, device=grid.device)
    if numba:
        from . import _numba_kernels

        weights = grid.weights.to(dtype).contiguous()
        _numba_kernels.forward_half(weights.numpy(), scale.numpy(), out.numpy(), grid.radius,
                                    torch.finfo(dtype).tiny)
        return out
    s = scale.view(grid.height, grid.width)
    for o, p, q in offset_blocks(grid.offsets[k // 2 :], grid.height, grid.width):
        out[o][p] = (grid.weights[k // 2 + o][p].to(dtype) * s[p]) * s[q]
    return flush_denormals(out, nonnegative=True)
