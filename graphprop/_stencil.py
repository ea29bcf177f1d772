"""Stencil kernels for :class:`~graphprop.GridGraph` products ``out = W @ z``.

Two kernels that tests keep equal to float rounding:

- ``numba``: a compiled CPU loop, parallel over image rows, one pixel's weights
  contiguous, the E columns of ``z`` innermost (padded to a multiple of 16 so they
  vectorise without a scalar tail) and the window's rows of ``z`` in cache; compiled
  on first use and cached on disk (as KeOps does for its reductions);
- ``torch``: one shifted multiply-add per offset on (H, W, E) views; any device.

Both compute every weight as ``(weights[o, p] * s[p]) * s[q]`` (``s`` = 1 for an
unnormalised graph), the order that keeps float32 finite when degrees are denormal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from ._grid import GridGraph

KERNELS = ("auto", "numba", "torch")
_COLUMN_MULTIPLE = 16  # float32 lanes of an AVX-512 register


def numba_available() -> bool:
    """Whether the numba kernel can be used (numba imports)."""
    try:
        import numba  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installation
        return False
    return True


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """The kernel ``"auto"`` stands for on ``device`` (numba on CPU when available)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    if kernel == "auto":
        return "numba" if device.type == "cpu" and numba_available() else "torch"
    if kernel == "numba" and device.type != "cpu":
        raise ValueError(f"kernel='numba' runs on CPU tensors, got a graph on {device}")
    return kernel


class StencilOperator:
    """``z -> W @ z`` for a fixed grid graph, prepared once for repeated products
    (the solvers call it every iteration).

    Args:
        grid: the graph.
        dtype: the dtype of the ``z`` it will be applied to.
        kernel: ``"auto"``, ``"numba"`` or ``"torch"``.
    """

    def __init__(self, grid: "GridGraph", dtype: torch.dtype, kernel: str = "auto") -> None:
        self.kernel = resolve_kernel(kernel, grid.device)
        # columns the numba loop vectorises without a scalar tail; the solvers pad to it
        self.column_multiple = _COLUMN_MULTIPLE if self.kernel == "numba" else 1
        self.grid = grid
        self.radius = grid.radius
        if self.kernel == "numba":
            # one pixel's weights contiguous, the scale folded in: (H, W, K)
            self.pixel_weights = _scaled_pixel_major(grid, dtype)
        else:
            self.weights = grid.weights.to(dtype)
            self.scale = None if grid.scale is None else grid.scale.to(dtype)

    def __call__(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        """z: (N, E) -> (N, E), written into ``out`` when given."""
        if self.kernel == "torch":
            result = _matmul_torch(self.grid, self.weights, self.scale, z)
            return result if out is None else out.copy_(result)
        from . import _numba_kernels

        n, e = z.shape
        padded = -(-e // _COLUMN_MULTIPLE) * _COLUMN_MULTIPLE
        if padded != e or not z.is_contiguous():  # pad: no scalar tail in the loop
            zp = z.new_zeros(n, padded)
            zp[:, :e] = z
        else:
            zp = z
        if out is None or padded != e or not out.is_contiguous():
            target = torch.empty_like(zp)
        else:
            target = out
        _numba_kernels.stencil(self.pixel_weights.numpy(), zp.numpy(), target.numpy(), self.radius)
        result = target if padded == e else target[:, :e]
        return result if out is None or result is out else out.copy_(result)


def _matmul_torch(grid: "GridGraph", weights: Tensor, scale: Tensor | None, z: Tensor) -> Tensor:
    from ._grid import offset_blocks

    h, w = grid.height, grid.width
    s = None if scale is None else scale.view(h, w)
    zi = z.reshape(h, w, -1)
    out = torch.zeros_like(zi)
    for o, p, q in offset_blocks(grid.offsets, h, w):
        wo = weights[o][p]
        if s is not None:
            wo = (wo * s[p]) * s[q]
        out[p].addcmul_(wo.unsqueeze(-1), zi[q])
    return out.reshape(z.shape)


def scaled_weights(grid: "GridGraph") -> Tensor:
    """(K, H, W) weights with the graph's scale folded in: ``(w[o, p] * s[p]) * s[q]``
    (0 where q is outside the grid)."""
    from ._grid import offset_blocks

    assert grid.scale is not None
    s = grid.scale.view(grid.height, grid.width)
    out = torch.zeros_like(grid.weights)
    for o, p, q in offset_blocks(grid.offsets, grid.height, grid.width):
        out[o][p] = (grid.weights[o][p] * s[p]) * s[q]
    return out


def _scaled_pixel_major(grid: "GridGraph", dtype: torch.dtype) -> Tensor:
    """(H, W, K) contiguous CPU weights in ``dtype`` with the scale folded in."""
    weights = grid.weights.to(dtype).contiguous()
    scale = (torch.ones(grid.num_nodes, dtype=dtype) if grid.scale is None else grid.scale.to(dtype)).contiguous()
    from . import _numba_kernels

    out = torch.empty(grid.height, grid.width, weights.size(0), dtype=dtype)
    _numba_kernels.pixel_major(weights.numpy(), scale.numpy(), out.numpy(), grid.radius)
    return out
