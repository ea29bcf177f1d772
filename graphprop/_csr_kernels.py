"""Compiled CPU loops (numba) for CSR graphs: build, exact symmetry test, normalise,
multiply. Compiled on first use and cached on disk.

The propagation operator of a :class:`~graphprop.Graph` is held as the CSR matrix of
``W^T`` (rows are the receiving nodes ``edge_index[1]``, PyG's ``adj_t``) with int32
column indices: it is read once per product for all the columns of ``z``.
Every loop here has a plain-torch twin in ``graphprop._graph`` / ``_message_passing``
that the tests keep equal to it.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from torch import Tensor

from ._simd import LANES, MAX_VECTORS, gather_row, scratch, store, store_shifted, zero

# Any values: numba's njit overloads type each option separately, not a dict of them
_PARALLEL: dict[str, Any] = {"parallel": True, "cache": True, "boundscheck": False}
_SERIAL: dict[str, Any] = {"cache": True, "boundscheck": False}


@numba.njit(**_SERIAL)
def _counting_sort(rows, cols, vals, n):  # pragma: no cover - compiled
    """CSR by a stable counting sort on ``rows``: (indptr int64, indices int32, values)."""
    e = rows.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    for k in range(e):
        indptr[rows[k] + 1] += 1
    for i in range(n):
        indptr[i + 1] += indptr[i]
    cursor = indptr[:-1].copy()
    indices = np.empty(e, dtype=np.int32)
    values = np.empty(e, dtype=vals.dtype)
    for k in range(e):
        r = rows[k]
        at = cursor[r]
        indices[at] = cols[k]
        values[at] = vals[k]
        cursor[r] = at + 1
    return indptr, indices, values


@numba.njit(**_PARALLEL)
def _sort_merge_rows(indptr, indices, values):  # pragma: no cover - compiled
    """Sort each row by column, sum duplicates, drop zeros, in place; returns the new
    row lengths (entries kept at the start of each row's slice)."""
    n = indptr.shape[0] - 1
    lengths = np.zeros(n, dtype=np.int64)
    for i in numba.prange(n):
        a, b = indptr[i], indptr[i + 1]
        ordered = True
        for k in range(a + 1, b):
            if indices[k] < indices[k - 1]:
                ordered = False
                break
        if not ordered:
            order = np.argsort(indices[a:b], kind="mergesort")
            ci = indices[a:b][order]
            cv = values[a:b][order]
            indices[a:b] = ci
            values[a:b] = cv
        m = a
        for k in range(a, b):
            if m > a and indices[m - 1] == indices[k]:
                values[m - 1] += values[k]
            else:
                indices[m] = indices[k]
                values[m] = values[k]
                m += 1
        kept = a
        for k in range(a, m):
            if values[k] != 0:
                indices[kept] = indices[k]
                values[kept] = values[k]
                kept += 1
        lengths[i] = kept - a
    return lengths


@numba.njit(**_PARALLEL)
def _compact(indptr, indices, values, lengths):  # pragma: no cover - compiled
    n = lengths.shape[0]
    out_ptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        out_ptr[i + 1] = out_ptr[i] + lengths[i]
    out_idx = np.empty(out_ptr[n], dtype=np.int32)
    out_val = np.empty(out_ptr[n], dtype=values.dtype)
    for i in numba.prange(n):
        a, o = indptr[i], out_ptr[i]
        for k in range(lengths[i]):
            out_idx[o + k] = indices[a + k]
            out_val[o + k] = values[a + k]
    return out_ptr, out_idx, out_val


def canonical_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int):
    """The CSR matrix with entries ``M[rows[e], cols[e]] += vals[e]``: rows sorted by
    column, duplicates summed, zeros dropped. (indptr int64, indices int32, values)."""
    indptr, indices, values = _counting_sort(rows, cols, vals, n)
    lengths = _sort_merge_rows(indptr, indices, values)
    if np.array_equal(lengths, np.diff(indptr)):  # nothing merged or dropped
        return indptr, indices, values
    return _compact(indptr, indices, values, lengths)


@numba.njit(**_PARALLEL)
def _sorted_unique_nonzero(rows, cols, vals):  # pragma: no cover - compiled
    """Whether the edges are strictly increasing in (row, col) with no zero weight."""
    bad = 0
    for k in numba.prange(rows.shape[0]):
        if vals[k] == 0 or (k > 0 and (rows[k] < rows[k - 1] or (rows[k] == rows[k - 1] and cols[k] <= cols[k - 1]))):
            bad += 1
    return bad == 0


def canonical_csr_if_sorted(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int):
    """The canonical CSR of ``M[rows, cols] = vals`` without sorting when the edges
    already are (strictly increasing (row, col), no zero weight, e.g. the output of
    ``symmetrize``); None otherwise."""
    if not _sorted_unique_nonzero(rows, cols, vals):
        return None
    indptr = np.searchsorted(rows, np.arange(n + 1, dtype=rows.dtype)).astype(np.int64)
    return indptr, cols.astype(np.int32), vals


def _transpose(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray):
    """CSR of the transpose; its rows come out sorted (the stable sort reads the rows
    in order)."""
    n = indptr.shape[0] - 1
    row_ids = np.repeat(np.arange(n, dtype=np.int32), np.diff(indptr))
    return _counting_sort(indices, row_ids, values, n)


@numba.njit(**_PARALLEL)
def _same_entries(indices, values, t_indices, t_values, rtol):  # pragma: no cover - compiled
    """Count of entries that differ: other column, or values beyond ``rtol`` relative."""
    bad = 0
    for k in numba.prange(indices.shape[0]):
        a, b = values[k], t_values[k]
        if indices[k] != t_indices[k] or abs(a - b) > rtol * max(abs(a), abs(b)):
            bad += 1
    return bad


def is_symmetric(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, rtol: float,
                 transpose: tuple | None = None) -> bool:
    """Whether the canonical CSR matrix equals its transpose (``transpose``, the
    canonical CSR of the transpose, when already known): the same pattern exactly and
    every value within ``rtol`` (relative) of its mirror."""
    t_ptr, t_idx, t_val = _transpose(indptr, indices, values) if transpose is None else transpose
    if not np.array_equal(indptr, t_ptr):
        return False
    return _same_entries(indices, values, t_idx, t_val, rtol) == 0


@numba.njit(**_PARALLEL)
def normalized_values(indptr, indices, values, out):  # pragma: no cover - compiled
    """``out[k] = (M[r, c] * d[c]^-1/2) * d[r]^-1/2`` for the entries of the canonical
    CSR matrix M (rows = receiving nodes), ``d`` its row sums without the diagonal
    (the in-degrees; a zero in-degree gives 0, as PyG's ``gcn_norm``), diagonal
    entries 0. Computed in float64 after scaling the
    weights by a power of two to the largest one (the result does not depend on the
    scale, and the sums cannot overflow), then stored in ``out``'s dtype."""
    n = indptr.shape[0] - 1
    nnz = indices.shape[0]
    top = 0.0
    for k in range(nnz):
        top = max(top, np.float64(values[k]))
    scale = 1.0
    if top > 0:
        scale = 2.0 ** (-np.floor(np.log2(top)))
    dinv = np.empty(n, dtype=np.float64)
    for i in numba.prange(n):
        s = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            if indices[k] != i:
                s += np.float64(values[k]) * scale
        dinv[i] = 1.0 / np.sqrt(s) if s > 0 else 0.0
    for i in numba.prange(n):
        for k in range(indptr[i], indptr[i + 1]):
            c = indices[k]
            if c == i:
                out[k] = 0
            else:
                out[k] = ((np.float64(values[k]) * scale) * dinv[c]) * dinv[i]


@numba.njit(**_PARALLEL)
def count_rows_below(z, bound):  # pragma: no cover - compiled
    """The number of rows i with ``|z[i, c]| <= bound[c]`` for every column c."""
    n, e_cols = z.shape
    count = 0
    for i in numba.prange(n):
        below = 1
        for e in range(e_cols):
            if abs(z[i, e]) > bound[e]:
                below = 0
                break
        count += below
    return count


_GATHER_1, _GATHER_2, _GATHER_3 = (gather_row(v) for v in (1, 2, 3))
assert MAX_VECTORS == 3

_ROWS = 256  # rows per task of the product: one accumulator per task
# How far ahead, in matrix entries (about 1.5 rows of the 1M-node benchmark graph), the
# product prefetches the row of z it will gather: the gathers are random, so the
# hardware prefetcher cannot see them coming. Measured on 2 shared cores of an AMD
# EPYC (AVX-512), 1M nodes, 20M entries, 10 float32 columns, one thread (CPU time,
# under load): 0.53 s without, 0.38 s at 8, 0.33 s at 16, 0.32 s at 32, 0.33 s at 64.
_PREFETCH_AHEAD = 32
# The plain kernel prefetches only where z does not fit in the L2 caches (2 x 1 MiB here):
# on the LPOSS patch graph (z 1 MiB, 46 float64 columns) they cost it 4% (22.4 ms against
# 21.5). The blocked kernel always prefetches: on that product min 4.1-4.7 ms against 4.4-5.4.
_PREFETCH_MIN_BYTES = 4 << 20


@intrinsic
def _prefetch(typingctx, z, row, col):  # pragma: no cover - compiled
    """Prefetch ``z[row, col]`` of a 2-D array (its cache line) for reading, into all
    cache levels (``llvm.prefetch``; a hint, it never faults)."""
    sig = types.void(z, row, col)

    def codegen(context, builder, signature, args):
        zty, rowty, colty = signature.args
        array = context.make_array(zty)(context, builder, args[0])
        shape = cgutils.unpack_tuple(builder, array.shape, 2)
        strides = cgutils.unpack_tuple(builder, array.strides, 2)
        at = [context.cast(builder, a, t, types.intp) for a, t in ((args[1], rowty), (args[2], colty))]
        ptr = cgutils.get_item_pointer2(context, builder, array.data, shape, strides, zty.layout, at)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(inline="always", cache=True)
def _prefetch_row(z, row):  # pragma: no cover - compiled
    """Prefetch every cache line (64 B) that ``z[row, :]`` spans."""
    last = z.shape[1] - 1
    for col in range(0, last, 64 // z.itemsize):
        _prefetch(z, row, col)
    _prefetch(z, row, last)


@numba.njit(inline="always", cache=True)
def _accumulate(acc, v, z, j):  # pragma: no cover - compiled
    for e in range(acc.shape[0]):
        acc[e] += v * z[j, e]


@numba.njit(**_PARALLEL)
def _product(indptr, indices, values, z, out, dots, alpha, fused, prefetch):  # pragma: no cover - compiled
    """``acc_i = sum_k values[k] * z[indices[k], :]`` over row i's entries, for all the
    columns of ``z`` in one pass over the matrix. ``fused=False``: ``out[i] = acc_i``.
    ``fused=True`` (the CG's step on ``I - alpha M``): ``out[i] = z[i] - alpha acc_i``
    and ``dots[t] = sum over task t's rows of z[i] * out[i]`` (E,) partial sums.
    ``prefetch``: prefetch the rows of z gathered _PREFETCH_AHEAD entries later."""
    n = indptr.shape[0] - 1
    nnz = indices.shape[0]
    e_cols = z.shape[1]
    tasks = (n + _ROWS - 1) // _ROWS
    for t in numba.prange(tasks):
        acc = np.empty(e_cols, dtype=out.dtype)
        for i in range(t * _ROWS, min(n, (t + 1) * _ROWS)):
            for e in range(e_cols):
                acc[e] = 0
            a, b = indptr[i], indptr[i + 1]
            if prefetch:  # the rows gathered _PREFETCH_AHEAD entries later
                for k in range(a, min(b, nnz - _PREFETCH_AHEAD)):
                    _prefetch_row(z, indices[k + _PREFETCH_AHEAD])
                    _accumulate(acc, values[k], z, indices[k])
                a = max(a, min(b, nnz - _PREFETCH_AHEAD))
            for k in range(a, b):
                _accumulate(acc, values[k], z, indices[k])
            if fused:
                for e in range(e_cols):
                    q = z[i, e] - alpha * acc[e]
                    out[i, e] = q
                    dots[t, e] += z[i, e] * q
            else:
                for e in range(e_cols):
                    out[i, e] = acc[e]


@numba.njit(inline="always", cache=True)
def _gather(acc, values, indices, a, b, z, z0, e, ahead, nv):  # pragma: no cover - compiled
    """acc[:nv] += sum over k in [a, b) of values[k] * z.flat[indices[k] * e + z0 + c * LANES:][:LANES]."""
    if nv == 3:
        _GATHER_3(acc, values, indices, a, b, z, z0, e, ahead)
    elif nv == 2:
        _GATHER_2(acc, values, indices, a, b, z, z0, e, ahead)
    else:
        _GATHER_1(acc, values, indices, a, b, z, z0, e, ahead)


@numba.njit(**_PARALLEL)
def _product_blocked(indptr, indices, values, z, out, dots, alpha, fused, ahead):  # pragma: no cover - compiled
    """:func:`_product` for ``z`` whose width E is a multiple of LANES (16), E / LANES
    vectors, with the explicit SIMD of :mod:`._simd`: each row's accumulators stay in
    registers, by blocks of up to MAX_VECTORS vectors (one pass over the row's entries
    per block). ``ahead > 0``: prefetch the z rows gathered ``ahead`` entries later."""
    n = indptr.shape[0] - 1
    e_cols = z.shape[1]
    vectors = e_cols // LANES
    tasks = (n + _ROWS - 1) // _ROWS
    for t in numba.prange(tasks):
        acc = scratch(out)
        for i in range(t * _ROWS, min(n, (t + 1) * _ROWS)):
            a, b = indptr[i], indptr[i + 1]
            for c0 in range(0, vectors, MAX_VECTORS):
                nv = min(MAX_VECTORS, vectors - c0)
                zero(acc, nv)
                _gather(acc, values, indices, a, b, z, c0 * LANES, e_cols, ahead, nv)
                for c in range(nv):
                    at = i * e_cols + (c0 + c) * LANES
                    if fused:
                        store_shifted(acc, c * LANES, z, out, at, alpha, dots, t * e_cols + (c0 + c) * LANES)
                    else:
                        store(acc, c * LANES, out, at)


def _run_product(indptr, indices, values, z, out, dots, alpha, fused) -> None:
    """The product on the blocked SIMD kernel where E is a multiple of LANES (prefetching
    always), else on the plain one (prefetching where z is larger than the L2 caches)."""
    if z.shape[1] % LANES == 0 and z.shape[1] > 0:
        _product_blocked(indptr, indices, values, z, out, dots, alpha, fused, _PREFETCH_AHEAD)
    else:
        _product(indptr, indices, values, z, out, dots, alpha, fused, z.nbytes >= _PREFETCH_MIN_BYTES)


def spmm(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, z: np.ndarray, out: np.ndarray) -> None:
    """``out[i, :] = sum_k values[k] * z[indices[k], :]`` over row i's entries, for
    all the columns of ``z`` (N, E) in one pass over the matrix; ``z`` and ``out``
    C-contiguous, of ``values``' dtype."""
    _run_product(indptr, indices, values, z, out, np.zeros((1, 1), dtype=out.dtype), 0.0, False)


def shifted_spmm_dot(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, alpha: float,
                     z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = z - alpha M z`` and returns (E,) the column sums of ``z * out``, in the
    same single pass over the matrix (sums by tasks of _ROWS rows, in z's dtype)."""
    n = indptr.shape[0] - 1
    dots = np.zeros(((n + _ROWS - 1) // _ROWS, z.shape[1]), dtype=out.dtype)
    _run_product(indptr, indices, values, z, out, dots, alpha, True)
    return dots.sum(0)


class CsrOperator:
    """``z -> P @ z`` for a graph's canonical receiver CSR (``W^T``), its values
    normalised (``normalize=True``: in-degree, float64, then cast) or as given, in
    ``dtype``; prepared once per graph, normalisation and dtype (``label_propagation``
    caches it on the :class:`~graphprop.Graph`), applied every iteration.

    Parameters
    ----------
    indptr, indices, values : numpy.ndarray
        The canonical CSR of ``W^T``: (N + 1,) int64, (nnz,) int32, (nnz,) floating.
    normalize : bool
        Normalise as :func:`normalized_values` does.
    dtype : torch.dtype
        The dtype of the ``z`` it will be applied to (float32 or float64).
    """

    column_multiple = 1  # any width is read as it is; padded_width says which widths are faster

    def padded_width(self, e: int) -> int:
        """The width to give ``e`` columns:

        - ``e`` itself when it is whole 64-byte vectors (8 float64 / 16 float32 columns);
        - else ``e`` rounded up to a multiple of 16, the register-blocked kernel, where that
          adds at most 60%;
        - else ``e`` rounded up to whole vectors where that adds at most an eighth;
        - else ``e``.

        Measured on this project's machine (AMD EPYC, 2 cores, ``benchmarks/README.md``;
        warm 10-iteration CG, the two widths interleaved in one process): 10 float32
        columns as 16 took 6.0 against 9.6 ms at 10k nodes, 49 against 68 ms at 100k, 1.30
        against 1.79 s at 1M; 12 as 16 1.57x and 28 as 32 1.53x faster at 100k; 4 as 16 was
        1.3-2x slower at 10k and 1M; float64 24 and 40 columns (whole vectors) were 8-12%
        slower as 32 and 48; 46 float64 columns as 48 take 4-6 ms a product on the patch
        graph against 10-15 ms as 46.
        """
        lanes = 64 // self.values.itemsize
        if e % lanes == 0:
            return e
        blocked = -(-e // LANES) * LANES
        if 5 * (blocked - e) <= 3 * e:
            return blocked
        whole = -(-e // lanes) * lanes
        return whole if 8 * (whole - e) <= e else e

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, *,
                 normalize: bool, dtype: torch.dtype) -> None:
        self.indptr, self.indices = indptr, indices
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        if normalize:
            self.values = np.empty(indices.shape[0], dtype=np_dtype)
            normalized_values(indptr, indices, values, self.values)
        else:
            self.values = values.astype(np_dtype, copy=False)

    def __call__(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        """z: (N, E) -> (N, E), written into ``out`` when given."""
        zc = z.contiguous()
        target = out if out is not None and out.is_contiguous() else torch.empty_like(zc)
        spmm(self.indptr, self.indices, self.values, zc.numpy(), target.numpy())
        return target if out is None or target is out else out.copy_(target)

    def shifted_dot(self, p: Tensor, alpha: float, q: Tensor) -> Tensor:
        """One CG step's work on ``A = I - alpha P``: writes ``q = p - alpha P p`` and
        returns the (E,) column sums of ``p * q``, in one pass over the matrix.

        Parameters
        ----------
        p, q : Tensor
            (N, E), contiguous, of the operator's dtype; ``q`` is overwritten.
        alpha : float
            The shift.
        """
        if not (p.is_contiguous() and q.is_contiguous()):
            torch.add(p, self(p), alpha=-alpha, out=q)
            return (p * q).sum(0)
        dots = shifted_spmm_dot(self.indptr, self.indices, self.values, float(alpha), p.numpy(), q.numpy())
        return torch.from_numpy(dots)
