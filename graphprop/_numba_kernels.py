"""Compiled CPU loops (numba), compiled on first use and cached on disk.

Only imported when numba is available and the tensors are on the CPU; every loop
here has a plain-torch twin that tests keep equal to it to float rounding.
"""

from __future__ import annotations

import numba
import numpy as np

_PARALLEL = dict(parallel=True, cache=True, boundscheck=False)


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
    out = np.zeros(e_cols, dtype=a.dtype)
    for c in range(chunks):
        for e in range(e_cols):
            out[e] += partial[c, e]
    return out


@numba.njit(**_PARALLEL)
def cg_step(x, r, p, q, step):  # pragma: no cover - compiled
    """x += step * p; r -= step * q; returns (E,) the new r . r, in one pass."""
    n, e_cols = x.shape
    chunks = (n + _CHUNK - 1) // _CHUNK
    partial = np.zeros((chunks, e_cols), dtype=x.dtype)
    for c in numba.prange(chunks):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            for e in range(e_cols):
                x[i, e] += step[e] * p[i, e]
                r[i, e] -= step[e] * q[i, e]
                partial[c, e] += r[i, e] * r[i, e]
    out = np.zeros(e_cols, dtype=x.dtype)
    for c in range(chunks):
        for e in range(e_cols):
            out[e] += partial[c, e]
    return out


@numba.njit(**_PARALLEL)
def cg_direction(p, r, beta):  # pragma: no cover - compiled
    """p = beta * p + r."""
    n, e_cols = p.shape
    for i in numba.prange(n):
        for e in range(e_cols):
            p[i, e] = beta[e] * p[i, e] + r[i, e]


@numba.njit(**_PARALLEL)
def shifted_system(p, wp, alpha, q):  # pragma: no cover - compiled
    """q = p - alpha * wp."""
    n, e_cols = p.shape
    for i in numba.prange(n):
        for e in range(e_cols):
            q[i, e] = p[i, e] - alpha * wp[i, e]
