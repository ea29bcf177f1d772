"""Compiled CPU loops (numba) building kNN graphs and graphs in CSR order, compiled on first
use and cached on disk.

Only imported when numba is available and the tensors are on the CPU;
:func:`graphprop.symmetrize` and :func:`graphprop.sym_normalize` (after
:func:`graphprop.remove_self_loops`) are the general twins that tests keep equal to them.
"""

from __future__ import annotations

import numba
import numpy as np

# symmetric_knn, _transpose and normalized_without_self_loops are serial loops (a pass over a
# few thousand rows takes milliseconds); the patch stage's selection, W_hat build and
# weights run their rows in parallel (numba's threads; torch's are idle meanwhile)

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


_CHUNK = 32  # rows per task of the parallel loops (one scratch allocation per task)
_SAMPLE = 256  # entries of a row sampled to guess a value just below its k-th largest


@numba.njit(cache=True, boundscheck=False)
def _kth_largest_key(keys, c, k, lo, hi):  # pragma: no cover - compiled
    """The k-th largest of ``keys[:c]``, given ``lo`` with at least k keys >= lo and ``hi``
    with fewer: the largest x with ``#(keys >= x) >= k``, by bisection on x (each step
    one branch-free count, at most 64 steps)."""
    while lo < hi - 1:  # (hi - lo can overflow)
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor of the mean, without overflow
        count = 0
        for t in range(c):
            count += keys[t] >= mid
        if count >= k:
            lo = mid
        else:
            hi = mid
    return lo


@numba.njit(inline="always")
def _order_key(x, shift, low_bits, negative_zero):  # pragma: no cover - compiled
    """An integer in the order of the float whose bits are ``x``: the ``shift`` low bits
    flipped where the sign is set; -0.0 keyed as +0.0 (they compare equal)."""
    x = np.int64(x)
    return np.int64(0) if x == negative_zero else x ^ ((x >> shift) & low_bits)


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _select_topk(scores, bits, shift, negative_zero, k):  # pragma: no cover - compiled
    m, n = scores.shape
    values = np.empty((m, k), dtype=scores.dtype)
    indices = np.empty((m, k), dtype=np.int64)
    step = max(1, n // _SAMPLE)
    size = (n + step - 1) // step
    p = k / n
    rank = max(1, min(size, int(size * p + 3.0 * np.sqrt(size * p * (1.0 - p)) + 2.0)))
    low_bits = (np.int64(1) << shift) - 1
    tasks = (m + _CHUNK - 1) // _CHUNK
    for task in numba.prange(tasks):
        sample = np.empty(size, dtype=np.int64)
        kept = np.empty(n, dtype=np.int64)
        kept_index = np.empty(n, dtype=np.int64)
        for i in range(task * _CHUNK, min(m, (task + 1) * _CHUNK)):
            first = _order_key(bits[i, 0], shift, low_bits, negative_zero)
            low, top = first, first
            for t in range(size):
                key = _order_key(bits[i, t * step], shift, low_bits, negative_zero)
                sample[t] = key
                low = min(low, key)
                top = max(top, key)
            pivot = _kth_largest_key(sample, size, rank, low, top + 1)
            t = 0
            while sample[t] != pivot:
                t += 1
            pivot_value = scores[i, t * step]
            row = scores[i]
            c = 0
            for j in range(n):  # the indices of the entries >= the pivot, branch-free
                kept_index[c] = j
                c += row[j] >= pivot_value
            if c < k:  # the sample misled: keep every entry
                for j in range(n):
                    kept_index[j] = j
                c = n
            low = pivot
            for t in range(c):
                key = _order_key(bits[i, kept_index[t]], shift, low_bits, negative_zero)
                kept[t] = key
                low = min(low, key)
                top = max(top, key)
            threshold = _kth_largest_key(kept, c, k, low, top + 1)
            ties = k
            for t in range(c):
                ties -= kept[t] > threshold
            out = 0
            for t in range(c):
                key = kept[t]
                if key > threshold or (key == threshold and ties > 0):
                    ties -= key == threshold
                    values[i, out] = scores[i, kept_index[t]]
                    indices[i, out] = kept_index[t]
                    out += 1
    return values, indices


def select_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of ``scores`` (M, N) float32/float64 (finite),
    ``1 <= k <= N``, by partial selection (no sort): ``(values (M, k), indices (M, k)
    int64)``, each row's indices increasing. Of entries equal to the k-th largest value,
    those of lowest index are taken (-0.0 equals +0.0).

    Per row, on integer keys in the order of the floats: a pivot, the key a little below
    where the k-th largest is expected (three standard deviations of a sample's count),
    from about ``_SAMPLE`` evenly spaced entries; one pass keeping the keys at or above it
    (about 1.3 k; a float comparison); the k-th largest of those by bisection on the key (branch-free counts);
    then the kept entries above it and as many equal to it as are needed, in index order.
    If fewer than k entries reach the pivot, every entry is kept: the result does not
    depend on the sample. Rows run in parallel, in tasks of ``_CHUNK`` rows.
    """
    scores = np.ascontiguousarray(scores)
    if scores.dtype == np.float32:
        bits, shift = scores.view(np.int32), 31
    else:
        bits, shift = scores.view(np.int64), 63
    return _select_topk(scores, bits, shift, -(1 << shift), k)


def normalized_symmetric_knn(indices: np.ndarray, weights: np.ndarray):
    """``D^-1/2 (W + W^T) D^-1/2`` without self-loops, in float64, of the kNN graph with
    ``W[i, indices[i, t]] += weights[i, t]`` (N, k), each row of ``indices`` non-decreasing,
    entries in [0, N): ``(indptr (N+1,) int64, columns (E,) int32, values (E,) float64,
    edge_index (2, E) int64)``, the canonical CSR of the result (rows sorted by column,
    zero entries dropped) and its edges.

    The same numbers as ``symmetric_knn`` then ``normalized_without_self_loops``: each entry
    ``w_ij + w_ji`` summed in the weights' dtype (``w_ij`` first), d_i the float64 sum of
    row i off the diagonal in column order (a zero degree counted as 1), entries
    ``(w * d_i^-1/2) * d_j^-1/2``. Each row is a merge of its own sorted list with the
    sorted list of the nodes that have it as a neighbour: no sort, no scratch row; rows
    run in parallel.
    """
    return compact_normalized(*_merged_knn_rows(indices, weights))


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _merged_knn_rows(indices, weights):  # pragma: no cover - compiled
    """Pass 1 of :func:`normalized_symmetric_knn`: the rows of W + W^T merged into their room
    (the arguments of :func:`compact_normalized`)."""
    n, k = indices.shape
    start, source, value = _transpose(indices, weights, n)
    # pass 1: each merged row, diagonal and zero sums dropped, into room for k + in-degree
    room = np.empty(n + 1, dtype=np.int64)
    room[0] = 0
    for i in range(n):
        room[i + 1] = room[i] + k + start[i + 1] - start[i]
    merged_col = np.empty(room[n], dtype=np.int32)
    merged_val = np.empty(room[n], dtype=weights.dtype)
    length = np.empty(n, dtype=np.int64)
    dinv = np.empty(n, dtype=np.float64)
    tasks = (n + _CHUNK - 1) // _CHUNK
    for task in numba.prange(tasks):
        for i in range(task * _CHUNK, min(n, (task + 1) * _CHUNK)):
            a, b, b_end = 0, start[i], start[i + 1]
            out = room[i]
            d = 0.0
            while a < k or b < b_end:
                j = indices[i, a] if a < k else n
                if b < b_end and source[b] < j:
                    j = source[b]
                s = weights.dtype.type(0)
                while a < k and indices[i, a] == j:
                    s += weights[i, a]
                    a += 1
                while b < b_end and source[b] == j:
                    s += value[b]
                    b += 1
                if j != i:
                    d += np.float64(s)
                    if s != 0:
                        merged_col[out] = j
                        merged_val[out] = s
                        out += 1
            length[i] = out - room[i]
            dinv[i] = 1.0 / np.sqrt(d if d > 0 else 1.0)
    return room, merged_col, merged_val, length, dinv


@numba.njit(parallel=True, cache=True, boundscheck=False)
def compact_normalized(room, merged_col, merged_val, length, dinv):  # pragma: no cover - compiled
    """The last pass of the W_hat builds (:func:`normalized_symmetric_knn`,
    ``segmentation._patch_kernels.normalized_patch_graph``): row i's ``length[i]`` entries of
    ``W + W^T``, columns increasing, stored from ``room[i]`` in ``merged_col`` / ``merged_val``,
    compacted into the canonical CSR with values ``(w * dinv[i]) * dinv[j]`` in float64:
    ``(indptr (N+1,) int64, columns (E,) int32, values (E,) float64, edge_index (2, E) int64)``."""
    n = length.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        indptr[i + 1] = indptr[i] + length[i]
    columns = np.empty(indptr[n], dtype=np.int32)
    values = np.empty(indptr[n], dtype=np.float64)
    edge_index = np.empty((2, indptr[n]), dtype=np.int64)
    for i in numba.prange(n):
        for t in range(length[i]):
            j = merged_col[room[i] + t]
            e = indptr[i] + t
            columns[e] = j
            values[e] = (np.float64(merged_val[room[i] + t]) * dinv[i]) * dinv[j]
            edge_index[0, e] = i
            edge_index[1, e] = j
    return indptr, columns, values, edge_index
