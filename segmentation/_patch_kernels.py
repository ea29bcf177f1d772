"""Compiled CPU loops (numba) of the LPOSS patch graph, compiled on first use and cached on
disk; :func:`segmentation.stages.patch_graph`'s torch formula, and graphprop's
``symmetrize`` / ``sym_normalize`` after it, are their twins."""

from __future__ import annotations

import numba
import numpy as np

from graphprop._knn_kernels import _DEBRUIJN, _DEBRUIJN_POSITION, compact_normalized


@numba.njit(inline="always", cache=True)
def _weight(s, dy, dx, g, sg, p, cube, linear):  # pragma: no cover - compiled
    """``max(s, 0) ** gamma * exp(-sigma * d ** pix_dist_pow)`` in float32, d = |(dy, dx)|."""
    d = np.sqrt(dy * dy + dx * dx)
    v = max(s, np.float32(0))
    similarity = v * v * v if cube else v ** g  # the published gamma 3: s * s * s, as torch's s ** 3.0
    return similarity * np.exp(-sg * (d if linear else d ** p))  # the published p 1: d itself


@numba.njit(inline="always", cache=True)
def _popcount(x):  # pragma: no cover - compiled
    """The number of set bits of a uint64 (SWAR)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(parallel=True, cache=True, boundscheck=False)
def patch_weights(values, indices, centers, gamma, sigma, pix_dist_pow):  # pragma: no cover - compiled
    """``max(s, 0) ** gamma * exp(-sigma * d ** pix_dist_pow)`` of each kNN entry, in float32.

    Parameters
    ----------
    values : (N, k) float32, the similarities ``s`` of node i to its neighbours
    indices : (N, k) int64, the neighbours
    centers : (N, 2) float32, patch centres (y, x) in pixels; ``d`` is the distance of the
        centres of i and its neighbour

    Returns
    -------
    (N, k) float32 weights.
    """
    n, k = values.shape
    out = np.empty((n, k), dtype=np.float32)
    g, sg, p = np.float32(gamma), np.float32(sigma), np.float32(pix_dist_pow)
    cube, linear = gamma == 3.0, pix_dist_pow == 1.0
    for i in numba.prange(n):
        yi = centers[i, 0]
        xi = centers[i, 1]
        for t in range(k):
            j = indices[i, t]
            out[i, t] = _weight(values[i, t], yi - centers[j, 0], xi - centers[j, 1], g, sg, p, cube, linear)
    return out


def normalized_patch_graph(sims: np.ndarray, indices: np.ndarray, centers: np.ndarray, gamma: float, sigma: float,
                           pix_dist_pow: float):
    """``W_hat = D^-1/2 (W + W^T) D^-1/2`` without self-loops, in float64, of the LPOSS patch
    graph, from the (N, N) similarities themselves: the canonical CSR (rows sorted by column,
    zero entries dropped) and its edges, ``(indptr (N+1,) int64, columns (E,) int32, values
    (E,) float64, edge_index (2, E) int64)``.

    ``W[i, j] = w(s_ij, d_ij)`` (:func:`_weight`, float32) for j among i's neighbours. As
    ``sims`` is exactly symmetric, ``W^T[i, j] = w(s_ji, d_ji)`` is the same number, read from
    row i: each row of ``W + W^T`` is one pass over the union of i's neighbours and the nodes
    that have i as a neighbour (two bit sets), in column order, with no transposed edge list
    and no merge. Entries ``w_ij + w_ji`` summed in float32, d_i the float64 sum of row i off
    the diagonal in column order (a zero degree counted as 1), entries
    ``(w * d_i^-1/2) * d_j^-1/2``: the numbers of ``normalized_symmetric_knn`` on
    :func:`patch_weights`' lists.

    Parameters
    ----------
    sims : (N, N) float32, exactly symmetric (``graphprop._blas.inner_products(gram=True)``)
    indices : (N, k) int64, each row's k neighbours, distinct, in [0, N)
    centers : (N, 2) float32, patch centres (y, x) in pixels
    gamma, sigma, pix_dist_pow : the weights' settings
    """
    return compact_normalized(*_merged_patch_rows(sims, indices, centers, gamma, sigma, pix_dist_pow))


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _merged_patch_rows(sims, indices, centers, gamma, sigma, pix_dist_pow):  # pragma: no cover - compiled
    """The rows of :func:`normalized_patch_graph` merged into their room, with their degrees
    (the arguments of ``graphprop._knn_kernels.compact_normalized``)."""
    n, k = indices.shape
    words = (n + 63) // 64
    one = np.uint64(1)
    # outgoing[i]: i's neighbours; incoming[i]: the nodes with i among theirs. The tasks of
    # incoming own one word column each (sources 64 w .. 64 w + 63), so none writes another's.
    outgoing = np.zeros((n, words), dtype=np.uint64)
    incoming = np.zeros((n, words), dtype=np.uint64)
    for i in numba.prange(n):
        for t in range(k):
            j = indices[i, t]
            outgoing[i, j >> 6] |= one << np.uint64(j & 63)
    for word in numba.prange(words):
        for j in range(word * 64, min(n, word * 64 + 64)):
            bit = one << np.uint64(j & 63)
            for t in range(k):
                incoming[indices[j, t], word] |= bit
    g, sg, p = np.float32(gamma), np.float32(sigma), np.float32(pix_dist_pow)
    cube, linear = gamma == 3.0, pix_dist_pow == 1.0
    # pass 1: each row's nonzero off-diagonal entries, into room for its union's size
    size = np.empty(n, dtype=np.int64)
    for i in numba.prange(n):
        c = 0
        for word in range(words):
            c += _popcount(outgoing[i, word] | incoming[i, word])
        size[i] = c
    room = np.empty(n + 1, dtype=np.int64)
    room[0] = 0
    for i in range(n):
        room[i + 1] = room[i] + size[i]
    merged_col = np.empty(room[n], dtype=np.int32)
    merged_val = np.empty(room[n], dtype=np.float32)
    length = np.empty(n, dtype=np.int64)
    dinv = np.empty(n, dtype=np.float64)
    for i in numba.prange(n):
        yi, xi = centers[i, 0], centers[i, 1]
        out = room[i]
        d = 0.0
        for word in range(words):
            forward, backward = outgoing[i, word], incoming[i, word]
            bits = forward | backward
            while bits:
                low = bits & (~bits + one)
                bits ^= low
                j = word * 64 + _DEBRUIJN_POSITION[(low * _DEBRUIJN) >> np.uint64(58)]
                if j == i:
                    continue
                w = _weight(sims[i, j], yi - centers[j, 0], xi - centers[j, 1], g, sg, p, cube, linear)
                if forward & low and backward & low:
                    w = w + w
                if w != 0:
                    d += np.float64(w)
                    merged_col[out] = j
                    merged_val[out] = w
                    out += 1
        length[i] = out - room[i]
        dinv[i] = 1.0 / np.sqrt(d if d > 0 else 1.0)
    return room, merged_col, merged_val, length, dinv
