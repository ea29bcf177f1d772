"""Compiled CPU loops (numba) building kNN graphs and graphs in CSR order, compiled on first
use and cached on disk.

Only imported when numba is available and the tensors are on the CPU;
:func:`graphprop.symmetrize` and :func:`graphprop.sym_normalize` (after
:func:`graphprop.remove_self_loops`) are the general twins that tests keep equal to them.
"""

from __future__ import annotations

import numba
import numpy as np

# serial loops: at N of a few thousand a pass takes milliseconds, and on cores shared with
# other work (or with torch's threads) a parallel loop waits for its slowest thread

# de Bruijn sequence: the position of the lowest set bit of a 64-bit word by one multiply
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_POSITION = np.array(
    [0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4, 62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33,
     30, 24, 18, 12, 5, 63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11, 46, 26, 40, 15, 34,
     20, 31, 10, 25, 14, 19, 9, 13, 8, 7, 6], dtype=np.int64)


@numba.njit(cache=True, boundscheck=False)
def _transpose(indices, weights, n):  # pragma: no cover - compiled
    """The kNN lists turned around: for each node j, the (source i, weight) of every
    i with j among its neighbours, in increasing i (a stable counting sort)."""
    m, k = indices.shape
    start = np.zeros(n + 1, dtype=np.int64)
    for i in range(m):
        for t in range(k):
            start[indices[i, t] + 1] += 1
    for j in range(n):
        start[j + 1] += start[j]
    fill = start[:-1].copy()
    source = np.empty(m * k, dtype=np.int64)
    value = np.empty(m * k, dtype=weights.dtype)
    for i in range(m):
        for t in range(k):
            j = indices[i, t]
            source[fill[j]] = i
            value[fill[j]] = weights[i, t]
            fill[j] += 1
    return start, source, value


@numba.njit(cache=True, boundscheck=False)
def symmetric_knn(indices, weights):  # pragma: no cover - compiled
    """``W + W^T`` of the kNN graph with ``W[i, indices[i, t]] = weights[i, t]``, as
    edges sorted by (row, column): ``(edge_index (2, E), value (E,))``. An entry
    found from both sides gets ``w_ij + w_ji``; an explicit zero weight stays an edge.

    Each row is gathered in a dense scratch row (its own neighbours, then the nodes
    that have it as a neighbour, marked in a bitmap) and read back in column order
    from the bitmap: no sort.
    """
    n, k = indices.shape
    start, source, value = _transpose(indices, weights, n)
    words = (n + 63) // 64
    edges = np.empty((2, n * k + source.size), dtype=np.int64)  # at most k + in-degree per row
    val = np.empty(n * k + source.size, dtype=weights.dtype)
    acc = np.zeros(n, dtype=weights.dtype)
    seen = np.zeros(words, dtype=np.uint64)
    one = np.uint64(1)
    out = 0
    for i in range(n):
        for t in range(k):
            j = indices[i, t]
            acc[j] += weights[i, t]
            seen[j >> 6] |= one << np.uint64(j & 63)
        for s in range(start[i], start[i + 1]):
            j = source[s]
            acc[j] += value[s]
            seen[j >> 6] |= one << np.uint64(j & 63)
        for word in range(words):
            bits = seen[word]
            while bits:
                low = bits & (~bits + one)
                j = word * 64 + _DEBRUIJN_POSITION[(low * _DEBRUIJN) >> np.uint64(58)]
                edges[0, out] = i
                edges[1, out] = j
                val[out] = acc[j]
                acc[j] = 0
                out += 1
                bits ^= low
            seen[word] = 0
    return edges[:, :out].copy(), val[:out].copy()


@numba.njit(cache=True, boundscheck=False)
def normalized_without_self_loops(crow, col, val):  # pragma: no cover - compiled
    """``D^-1/2 W D^-1/2`` of a CSR graph (rows sorted) without its diagonal, in float64:
    ``(edge_index (2, E'), w_hat (E',))`` with ``w_hat = (w_ij * d_i^-1/2) * d_j^-1/2``, d the row sums
    of W off the diagonal in float64, a zero degree counted as 1 (as
    ``sym_normalize(remove_self_loops(graph))`` on float64 weights)."""
    n = crow.size - 1
    dinv = np.empty(n, dtype=np.float64)
    keep = np.empty(n, dtype=np.int64)
    for i in range(n):
        d = 0.0
        kept = 0
        for e in range(crow[i], crow[i + 1]):
            if col[e] != i:
                d += np.float64(val[e])
                kept += 1
        dinv[i] = 1.0 / np.sqrt(d if d > 0 else 1.0)
        keep[i] = kept
    out_crow = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        out_crow[i + 1] = out_crow[i] + keep[i]
    out_edges = np.empty((2, out_crow[n]), dtype=np.int64)
    out_val = np.empty(out_crow[n], dtype=np.float64)
    for i in range(n):
        out = out_crow[i]
        for e in range(crow[i], crow[i + 1]):
            j = col[e]
            if j != i:
                out_edges[0, out] = i
                out_edges[1, out] = j
                out_val[out] = (np.float64(val[e]) * dinv[i]) * dinv[j]
                out += 1
    return out_edges, out_val
