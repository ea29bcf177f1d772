"""Compiled CPU loops (numba) for kNN graphs, compiled on first use and cached on disk.

Only imported when numba is available and the tensors are on the CPU;
:func:`graphprop.symmetrize` is the general twin that tests keep equal to them.
"""

from __future__ import annotations

import numba
import numpy as np

_ROWS_PER_TASK = 64  # rows sharing one dense scratch row


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


@numba.njit(parallel=True, cache=True, boundscheck=False)
def symmetric_knn(indices, weights):  # pragma: no cover - compiled
    """``W + W^T`` of the kNN graph with ``W[i, indices[i, t]] = weights[i, t]``, as
    CSR sorted by (row, column): ``(crow (N + 1,), col (E,), value (E,))``. An entry
    found from both sides gets ``w_ij + w_ji``; an explicit zero weight stays an edge.

    Each row is gathered in a dense scratch row (its own neighbours, then the nodes
    that have it as a neighbour) and read back in column order: no sort.
    """
    n, k = indices.shape
    start, source, value = _transpose(indices, weights, n)
    # row i holds at most k + (in-degree of i) entries: fill those slots, then compact
    bound = np.empty(n + 1, dtype=np.int64)
    bound[0] = 0
    for i in range(n):
        bound[i + 1] = bound[i] + k + start[i + 1] - start[i]
    loose_col = np.empty(bound[n], dtype=np.int64)
    loose_val = np.empty(bound[n], dtype=weights.dtype)
    count = np.zeros(n, dtype=np.int64)
    tasks = (n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in numba.prange(tasks):
        acc = np.zeros(n, dtype=weights.dtype)
        seen = np.zeros(n, dtype=np.bool_)
        for i in range(task * _ROWS_PER_TASK, min(n, (task + 1) * _ROWS_PER_TASK)):
            for t in range(k):
                j = indices[i, t]
                acc[j] += weights[i, t]
                seen[j] = True
            for s in range(start[i], start[i + 1]):
                j = source[s]
                acc[j] += value[s]
                seen[j] = True
            out = bound[i]
            for j in range(n):
                if seen[j]:
                    loose_col[out] = j
                    loose_val[out] = acc[j]
                    acc[j] = 0
                    seen[j] = False
                    out += 1
            count[i] = out - bound[i]
    crow = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        crow[i + 1] = crow[i] + count[i]
    col = np.empty(crow[n], dtype=np.int64)
    val = np.empty(crow[n], dtype=weights.dtype)
    for i in numba.prange(n):
        col[crow[i]:crow[i + 1]] = loose_col[bound[i]:bound[i] + count[i]]
        val[crow[i]:crow[i + 1]] = loose_val[bound[i]:bound[i] + count[i]]
    return crow, col, val
