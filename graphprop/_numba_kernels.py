"""Compiled CPU loops (numba), compiled on first use and cached on disk.

Only imported when numba is available and the tensors are on the CPU; every loop
here has a plain-torch twin that tests keep equal to it to float rounding.

Two stencils: :func:`symmetric_stencil` (the default for a symmetric graph: half the
weights, register-blocked with the explicit SIMD of :mod:`._simd`, optionally fused
with the CG's ``q = p - alpha W p`` and ``p . q``) and :func:`stencil` (any grid graph,
all the weights pixel-major).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from ._simd import LANES, MAX_PIXELS, MAX_VECTORS, scratch, store, store_shifted, window_row, zero

# Any values: numba's njit overloads type each option separately, not a dict of them
_PARALLEL: dict[str, Any] = dict(parallel=True, cache=True, boundscheck=False)
_ROW_1_1, _ROW_1_2, _ROW_1_3 = window_row(1, 1), window_row(1, 2), window_row(1, 3)
_ROW_J_1, _ROW_J_2, _ROW_J_3 = (window_row(MAX_PIXELS, v) for v in (1, 2, 3))
assert MAX_VECTORS == 3


@numba.njit(inline="always", cache=True)
def _forward_offset(o, radius):  # pragma: no cover - compiled
    """(dy, dx) of forward offset o (the o-th after the window's centre)."""
    side = 2 * radius + 1
    window = side * radius + radius + 1 + o  # window index: the centre is skipped
    return window // side - radius, window % side - radius


@numba.njit(parallel=True, cache=True)
def exp_distance_grid(signal, radius, tau, tiny, out):  # pragma: no cover - compiled
    """The weights of :func:`~graphprop.grid_graph` with a float tau, in one pass:
    out[o, p] = out[opposite(o), q] = exp(-||f_p - f_q|| / tau) for every in-grid pair,
    each computed once (from the forward offset), 0 below ``tiny``; ``out`` (K, H, W)
    zeros on entry. The arithmetic of :func:`~graphprop.exp_distance_weight`, in the
    signal's dtype (``tau`` and ``tiny`` given in it)."""
    c_dim, h, w = signal.shape
    half = out.shape[0] // 2
    for row_index in numba.prange(h):
        y = np.int64(row_index)  # prange indices are unsigned: -y would wrap
        for o in range(half):
            dy, dx = _forward_offset(o, radius)
            yy = y + dy
            if yy >= h:
                continue
            for x in range(max(0, -dx), min(w, w - dx)):
                xx = x + dx
                d = signal[0, y, x] - signal[0, yy, xx]
                s = d * d
                for c in range(1, c_dim):
                    d = signal[c, y, x] - signal[c, yy, xx]
                    s += d * d
                v = math.exp(-math.sqrt(s) / tau)
                if v < tiny:
                    v = v * 0
                out[half + o, y, x] = v
                out[half - 1 - o, yy, xx] = v


@numba.njit(parallel=True, cache=True)
def mirrored(khw, radius):  # pragma: no cover - compiled
    """Whether khw[o, p] == khw[K - 1 - o, p + offset(o)] for every in-grid pair."""
    k, h, w = khw.shape
    half = k // 2
    bad = np.zeros(h, dtype=np.bool_)
    for row_index in numba.prange(h):
        y = np.int64(row_index)
        for o in range(half):
            dy, dx = _forward_offset(o, radius)
            yy = y + dy
            if yy >= h:
                continue
            for x in range(max(0, -dx), min(w, w - dx)):
                if khw[half + o, y, x] != khw[half - 1 - o, yy, x + dx]:
                    bad[y] = True
    return not bad.any()


@numba.njit(parallel=True, cache=True)
def forward_half(khw, scale, out, radius, tiny):  # pragma: no cover - compiled
    """out[o, y, x] = (khw[K/2 + o, y, x] * scale[p]) * scale[q] for the K/2 offsets after
    the centre (q = p + offset in the grid), 0 outside the grid and where below ``tiny``
    (the smallest normal number: no denormal operand in the products)."""
    k, h, w = khw.shape
    half = k // 2
    for row_index in numba.prange(h):
        y = np.int64(row_index)
        for o in range(half):
            dy, dx = _forward_offset(o, radius)
            yy = y + dy
            for x in range(w):
                xx = x + dx
                v = 0.0
                if yy < h and 0 <= xx < w:
                    v = (khw[half + o, y, x] * scale[y * w + x]) * scale[yy * w + xx]
                out[o, y, x] = v if abs(v) >= tiny else 0.0


@numba.njit(inline="always", cache=True)
def _row(acc, wf, w0, wstep, z, z0, zstep, e, n, nj, nv):  # pragma: no cover - compiled
    """The register block of ``nj`` pixels x ``nv`` vectors over one window row."""
    if n <= 0:
        return
    if nj == 1:
        if nv == 3:
            _ROW_1_3(acc, wf, w0, wstep, z, z0, zstep, e, n)
        elif nv == 2:
            _ROW_1_2(acc, wf, w0, wstep, z, z0, zstep, e, n)
        else:
            _ROW_1_1(acc, wf, w0, wstep, z, z0, zstep, e, n)
    elif nv == 3:
        _ROW_J_3(acc, wf, w0, wstep, z, z0, zstep, e, n)
    elif nv == 2:
        _ROW_J_2(acc, wf, w0, wstep, z, z0, zstep, e, n)
    else:
        _ROW_J_1(acc, wf, w0, wstep, z, z0, zstep, e, n)


@numba.njit(inline="always", cache=True)
def _window(acc, wf, z, y, x, nj, nv, c0, radius):  # pragma: no cover - compiled
    """acc[j, :nv] += sum over the window of pixels (y, x + j), j < nj, of w_pq z[q, c0:]:
    forward offsets with the weights stored at p, backward ones with the weights stored
    at q (w_pq = w_qp). The dx ranges are clipped to the grid for pixel x (nj = 1) or
    full (an interior block)."""
    _, h, w = wf.shape
    hw = h * w
    e = z.shape[1]
    side = 2 * radius + 1
    p = y * w + x
    # dy = 0: forward (0, dx), weight wf[dx - 1, y, x]; backward (0, -dx), wf[dx - 1, y, x - dx]
    _row(acc, wf, p, hw, z, (p + 1) * e + c0, e, e, min(radius, w - x - nj), nj, nv)
    _row(acc, wf, p - 1, hw - 1, z, (p - 1) * e + c0, -e, e, min(radius, x), nj, nv)
    for dy in range(1, radius + 1):
        o0 = radius + (dy - 1) * side  # forward index of (dy, -radius)
        if y + dy < h:
            lo, hi = max(-radius, -x), min(radius, w - x - nj)
            _row(acc, wf, (o0 + lo + radius) * hw + p, hw, z, (p + dy * w + lo) * e + c0, e, e, hi - lo + 1, nj, nv)
        if y - dy >= 0:
            lo, hi = max(-radius, x + nj - w), min(radius, x)
            _row(acc, wf, (o0 + lo + radius) * hw + p - dy * w - lo, hw - 1,
                 z, (p - dy * w - lo) * e + c0, -e, e, hi - lo + 1, nj, nv)


@numba.njit(inline="always", cache=True)
def _block(acc, wf, z, out, dots, d, alpha, fused, y, x, nj, nv, c0, radius):  # pragma: no cover
    """One register block: pixels (y, x + j), j < nj, columns c0 + [0, nv * LANES); with
    ``fused`` its share of p . q added to dots[d]."""
    w = wf.shape[2]
    e = z.shape[1]
    zero(acc, nj * nv)
    _window(acc, wf, z, y, x, nj, nv, c0, radius)
    for j in range(nj):
        for v in range(nv):
            zi = (y * w + x + j) * e + c0 + v * LANES
            if fused:
                store_shifted(acc, (j * nv + v) * LANES, z, out, zi, alpha, dots, d * e + c0 + v * LANES)
            else:
                store(acc, (j * nv + v) * LANES, out, zi)


TILE = 192  # columns of a tile: its 13-row window of z (48 columns) is ~0.5 MB, in L2
BAND = 32  # rows of a band: one work item is a band x a tile


def tiles(width: int, radius: int) -> int:
    """How many column tiles :func:`symmetric_stencil` splits ``width`` into (the rows of
    its ``dots`` are (H * tiles, E))."""
    return 1 + max(0, -(-(width - radius - TILE) // TILE))


@numba.njit(**_PARALLEL)
def symmetric_stencil(wf, z, out, dots, alpha, fused, radius):  # pragma: no cover - compiled
    """out = W @ z for a symmetric grid graph stored as its forward half ``wf`` (K/2, H, W)
    (:func:`forward_half`); z, out (N, E) C-contiguous, E a multiple of LANES.

    With ``fused``: out = z - alpha * W @ z and dots[y * T + t, :] = the sum of z * out
    over row y of tile t (dots (H * T, E), T = :func:`tiles`; summed by the caller), in
    the same pass.

    Parallel over bands of BAND rows x tiles of TILE columns (tile boundaries at
    radius + k * TILE, so that register blocks never straddle them): within one, the
    window of z rows slides down and stays in L2. Each row of a tile in blocks of
    MAX_PIXELS pixels x MAX_VECTORS vectors of columns whose accumulators stay in
    registers over a window row."""
    _, h, w = wf.shape
    e = z.shape[1]
    nvec = e // LANES
    ntiles = 1 + max(0, -(-(w - radius - TILE) // TILE))
    nbands = -(-h // BAND)
    for item in numba.prange(nbands * ntiles):
        band = np.int64(item) // ntiles  # prange indices are unsigned: -y would wrap
        tile = np.int64(item) % ntiles
        x0 = 0 if tile == 0 else radius + tile * TILE
        x1 = min(w, radius + (tile + 1) * TILE)
        acc = scratch(z.dtype)
        for y in range(band * BAND, min(h, (band + 1) * BAND)):
            if fused:
                for i in range(e):
                    dots[y * ntiles + tile, i] = 0
            for chunk in range(0, nvec, MAX_VECTORS):
                nv = min(MAX_VECTORS, nvec - chunk)
                c0 = chunk * LANES
                x = x0
                while x < x1:
                    interior = radius <= x and x + MAX_PIXELS - 1 + radius < w and x + MAX_PIXELS <= x1
                    nj = MAX_PIXELS if interior else 1
                    d = y * ntiles + tile
                    if nj == MAX_PIXELS and nv == MAX_VECTORS:  # the common case, specialised
                        _block(acc, wf, z, out, dots, d, alpha, fused, y, x, MAX_PIXELS, MAX_VECTORS, c0, radius)
                    else:
                        _block(acc, wf, z, out, dots, d, alpha, fused, y, x, nj, nv, c0, radius)
                    x += nj


@numba.njit(**_PARALLEL)
def pixel_major(khw, scale, hwk, radius):  # pragma: no cover - compiled
    """hwk[y, x, o] = (khw[o, y, x] * scale[p]) * scale[q], 0 outside the grid."""
    k, h, w = khw.shape
    side = 2 * radius + 1
    for row_index in numba.prange(h):
        y = np.int64(row_index)  # prange indices are unsigned: -y would wrap
        for x in range(w):
            sp = scale[y * w + x]
            for o in range(k):
                oo = o if o < k // 2 else o + 1
                yy = y + oo // side - radius
                xx = x + oo % side - radius
                if 0 <= yy < h and 0 <= xx < w:
                    hwk[y, x, o] = (khw[o, y, x] * sp) * scale[yy * w + xx]
                else:
                    hwk[y, x, o] = 0


@numba.njit(fastmath=True, **_PARALLEL)
def stencil(hwk, z, out, radius):  # pragma: no cover - compiled
    """out[p, :] = sum over in-grid offsets o of hwk[p, o] * z[p + o, :]."""
    h, w, _ = hwk.shape
    e_cols = z.shape[1]
    side = 2 * radius + 1
    center = radius * side + radius
    for row_index in numba.prange(h):
        y = np.int64(row_index)  # prange indices are unsigned: -y would wrap
        y0 = max(-radius, -y)
        y1 = min(radius, h - 1 - y)
        acc = np.empty(e_cols, dtype=z.dtype)
        for x in range(w):
            x0 = max(-radius, -x)
            x1 = min(radius, w - 1 - x)
            p = y * w + x
            for e in range(e_cols):
                acc[e] = 0
            for dy in range(y0, y1 + 1):
                row = (dy + radius) * side + radius
                qrow = p + dy * w
                for dx in range(x0, x1 + 1):
                    o = row + dx
                    if o == center:
                        continue
                    if o > center:
                        o -= 1
                    wpq = hwk[y, x, o]
                    q = qrow + dx
                    for e in range(e_cols):
                        acc[e] += wpq * z[q, e]
            for e in range(e_cols):
                out[p, e] = acc[e]


_CHUNK = 4096  # rows per partial sum


@numba.njit(inline="always", cache=True)
def _sum_chunks(partial):  # pragma: no cover - compiled
    """(E,) the column sums of the (chunks, E) partial sums, chunk by chunk in order (the same sum
    whatever the threads)."""
    chunks, e_cols = partial.shape
    out = np.zeros(e_cols, dtype=partial.dtype)
    for c in range(chunks):
        for e in range(e_cols):
            out[e] += partial[c, e]
    return out


@numba.njit(**_PARALLEL)
def column_dot(a, b):  # pragma: no cover - compiled
    """(E,) sums over rows of a * b, by chunks of rows (no (N, E) temporary)."""
    n, e_cols = a.shape
    chunks = (n + _CHUNK - 1) // _CHUNK
    partial = np.zeros((chunks, e_cols), dtype=a.dtype)
    for c in numba.prange(chunks):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            for e in range(e_cols):
                partial[c, e] += a[i, e] * b[i, e]
    return _sum_chunks(partial)


@numba.njit(**_PARALLEL)
def cg_step(x, r, p, q, step, tiny):  # pragma: no cover - compiled
    """x += step * p; r -= step * q (entries below ``tiny`` in magnitude flushed to 0, so
    no denormal reaches the next product); returns (E,) the new r . r, in one pass."""
    n, e_cols = x.shape
    chunks = (n + _CHUNK - 1) // _CHUNK
    partial = np.zeros((chunks, e_cols), dtype=x.dtype)
    for c in numba.prange(chunks):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            for e in range(e_cols):
                x[i, e] += step[e] * p[i, e]
                v = r[i, e] - step[e] * q[i, e]
                v = v if abs(v) >= tiny else v * 0
                r[i, e] = v
                partial[c, e] += v * v
    return _sum_chunks(partial)


@numba.njit(**_PARALLEL)
def cg_direction(p, r, beta, tiny):  # pragma: no cover - compiled
    """p = beta * p + r, entries below ``tiny`` in magnitude flushed to 0."""
    n, e_cols = p.shape
    for i in numba.prange(n):
        for e in range(e_cols):
            v = beta[e] * p[i, e] + r[i, e]
            p[i, e] = v if abs(v) >= tiny else v * 0


@numba.njit(**_PARALLEL)
def shifted_system(p, wp, alpha, q):  # pragma: no cover - compiled
    """q = p - alpha * wp."""
    n, e_cols = p.shape
    for i in numba.prange(n):
        for e in range(e_cols):
            q[i, e] = p[i, e] - alpha * wp[i, e]
