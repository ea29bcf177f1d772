"""Exact k-nearest-neighbour search (torch blockwise or KeOps) and kNN graphs."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._graph import Graph, symmetrize
from ._optional import importable
from ._validation import (
    check_choice,
    check_positive_int,
    check_same_device,
    check_tensor,
    finite_nonnegative,
)

__all__ = ["knn", "knn_graph", "select_knn_backend"]

METRICS = ("cosine", "ip", "l2")
BACKENDS = ("auto", "torch", "keops")

# Elements of the (block x N) score matrix the torch backend holds at once (float32:
# 64 MiB). Memory stays O(block x N) whatever the number of queries.
_BLOCK_ELEMENTS = 1 << 24


def knn(
    x: Tensor,
    k: int,
    *,
    queries: Tensor | None = None,
    metric: str = "cosine",
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours of each query among the points ``x``.

    Parameters
    ----------
    x : (N, D) floating tensor
        The points searched.
    k : int
        Number of neighbours; ``k > N`` is clamped to N with a warning.
    queries : (M, D) floating tensor, optional
        The points whose neighbours are sought; default ``x`` itself (M = N), in which case
        each point is a candidate among its own neighbours (not always found: a duplicate
        point ties with it, and ``"ip"`` may rank a longer vector first).
    metric : {"cosine", "ip", "l2"}
        ``"cosine"`` (rows L2-normalised first, values are cosine similarities, largest
        first), ``"ip"`` (inner products, largest first) or ``"l2"`` (Euclidean distances,
        smallest first).
    backend : {"auto", "torch", "keops"}
        ``"torch"`` (blockwise matmul + top-k, memory O(block x N)), ``"keops"`` (pykeops
        ``LazyTensor`` ``Kmin_argKmin``, compiled on first use) or ``"auto"`` (see
        :func:`select_knn_backend`).

    Returns
    -------
    values : (M, k) tensor
        Best first, in the dtype of ``x``.
    indices : (M, k) int64 tensor
        Into ``x``. Both outputs are on the inputs' device.

    Raises
    ------
    ValueError
        NaN/inf inputs, mismatched dimensions or devices, an empty ``x``.
    """
    return _search(x, k, queries, metric, backend, ordered=True)


def _search(
    x: Tensor, k: int, queries: Tensor | None, metric: str, backend: str, ordered: bool,
    selection: bool = False,
) -> tuple[Tensor, Tensor]:
    """:func:`knn`; ``ordered=False`` lets the torch backend skip sorting each query's
    neighbours (the same neighbours and values, in an unspecified order). ``selection=True``
    (with ``ordered=False``): on the CPU, the numba partial selection instead of
    ``torch.topk`` (2-4x faster), each row's indices increasing, of equal values at the k-th
    place those of lowest index."""
    x = check_tensor("x", x, dims=("N", "D"), floating=True, finite=True, nonempty=True)
    if queries is None:
        q = x
    else:
        q = check_tensor("queries", queries, dims=("M", "D"), floating=True, finite=True)
        if q.size(1) != x.size(1):
            raise ValueError(
                f"queries must have the dimension of x: x is (N, {x.size(1)}), "
                f"queries is {tuple(q.shape)}"
            )
        check_same_device(x=x, queries=q)
        q = q.to(x.dtype)
    check_choice("metric", metric, METRICS)
    check_choice("backend", backend, BACKENDS)
    k = check_positive_int("k", k)
    n = x.size(0)
    if k > n:
        # stacklevel 3: the caller of knn / knn_graph
        warnings.warn(f"k={k} is larger than the number of points N={n}; using k={n}", stacklevel=3)
        k = n
    if metric == "cosine":
        x = _unit_rows(x)
        q = x if queries is None else _unit_rows(q)
    if backend == "auto":
        backend = select_knn_backend(n, q.size(0), x.size(1), k, x.device)
    if backend == "keops":
        return _knn_keops(x, q, k, metric)
    return _knn_torch(x, q, k, metric, ordered, selection)


def _unit_rows(t: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm; scaled by their largest entry first so that tiny
    (denormal) and huge rows neither underflow nor overflow. Zero rows stay zero."""
    peak = t.abs().amax(dim=1, keepdim=True)
    return F.normalize(t / torch.where(peak > 0, peak, torch.ones_like(peak)), dim=1)


def select_knn_backend(n: int, m: int, d: int, k: int, device: torch.device | str) -> str:
    """The backend ``knn(backend="auto")`` uses for M queries among N points in D
    dimensions.

    On a CPU the rule comes from the measurements in ``benchmarks/README.md``: the
    dense torch top-k won at every size measured (KeOps' CPU reductions were 1.1x to
    50x slower, e.g. 9.8 s against 0.19 s at N=2,940, D=768, k=400), so ``"torch"``.
    On CUDA (not measured here: no GPU was available) KeOps is chosen for low
    dimensions, modest k and many points, where KeOps' own benchmarks show it ahead
    of a materialised (block x N) score matrix; otherwise ``"torch"``. ``"keops"``
    is only chosen when pykeops imports.
    """
    if torch.device(device).type != "cuda":
        return "torch"
    if d <= 32 and k <= 64 and n * m >= 10**9 and _keops_available():
        return "keops"
    return "torch"


def _keops_available() -> bool:
    return importable("pykeops.torch")


def _knn_torch(x: Tensor, q: Tensor, k: int, metric: str, ordered: bool = True,
               selection: bool = False) -> tuple[Tensor, Tensor]:
    n, m = x.size(0), q.size(0)
    block = max(1, min(m, _BLOCK_ELEMENTS // max(n, 1)))
    values = torch.empty(m, k, dtype=x.dtype, device=x.device)
    indices = torch.empty(m, k, dtype=torch.long, device=x.device)
    sq_x = (x * x).sum(1) if metric == "l2" else None
    product = _numpy_product if _use_numpy_blas(x, q) else _torch_product
    for start in range(0, m, block):
        qb = q[start : start + block]
        scores = product(qb, x, gram=q is x and block == m)  # (block, N)
        if sq_x is not None:
            # ||q - x||^2 = ||q||^2 - 2 q.x + ||x||^2, ranked by the negated distance
            scores.mul_(2).sub_(sq_x).sub_((qb * qb).sum(1, keepdim=True))
        if ordered or not (selection and _compiled_selection(scores)):
            v, i = scores.topk(k, dim=1, largest=True, sorted=ordered)
        else:
            from ._knn_kernels import select_topk

            v, i = map(torch.from_numpy, select_topk(scores.numpy(), k))
        values[start : start + block] = v
        indices[start : start + block] = i
    if metric == "l2":
        values = _exact_l2(x, q, indices)
    return values, indices


def _compiled_selection(scores: Tensor) -> bool:
    """Whether the unordered top-k of ``scores`` can run as the numba partial selection
    (:func:`graphprop._knn_kernels.select_topk`): CPU float32/float64 scores that need no
    gradient, numba importable."""
    return _compiled_symmetrize(scores)


def _torch_product(qb: Tensor, x: Tensor, gram: bool = False) -> Tensor:
    return qb @ x.T


def _numpy_product(qb: Tensor, x: Tensor, gram: bool = False) -> Tensor:
    """``qb @ x.T`` by :func:`graphprop._blas.inner_products` (``gram``: ``qb`` is ``x``)."""
    from ._blas import inner_products

    return torch.from_numpy(inner_products(qb.numpy(), x.numpy(), gram=gram))


def _use_numpy_blas(x: Tensor, q: Tensor) -> bool:
    """Whether the (M, N) inner products run through numpy's BLAS: CPU float32/float64
    tensors that need no gradient. On the AMD EPYC of ``benchmarks/README.md`` numpy's
    OpenBLAS ran the patch stage's 2,940 x 2,940 x 768 product in 2.5x less CPU time
    than torch's MKL (which takes a slower path on AMD CPUs); the two agree to float
    rounding."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad
               for t in (x, q))


def _exact_l2(x: Tensor, q: Tensor, indices: Tensor) -> Tensor:
    """Euclidean distances of each query to its selected neighbours, from differences
    (the matmul expansion used for ranking loses digits for close points)."""
    out = torch.empty(indices.shape, dtype=x.dtype, device=x.device)
    block = max(1, _BLOCK_ELEMENTS // max(indices.size(1) * x.size(1), 1))
    for start in range(0, q.size(0), block):
        idx = indices[start : start + block]
        diff = x[idx] - q[start : start + block, None, :]
        out[start : start + block] = diff.norm(dim=2)
    return out


def _knn_keops(x: Tensor, q: Tensor, k: int, metric: str) -> tuple[Tensor, Tensor]:
    try:
        from pykeops.torch import LazyTensor
    except Exception as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(f"backend='keops' needs a working pykeops installation: {exc}") from exc
    x_j = LazyTensor(x.contiguous()[None, :, :])
    q_i = LazyTensor(q.contiguous()[:, None, :])
    if metric == "l2":
        cost = ((q_i - x_j) ** 2).sum(-1)
    else:
        cost = -(q_i | x_j)
    values, indices = cost.Kmin_argKmin(K=k, dim=1)
    indices = indices.long()
    if metric == "l2":
        values = values.clamp_min(0).sqrt()
    else:
        values = -values
    return values.reshape(q.size(0), k), indices.reshape(q.size(0), k)


def knn_graph(
    x: Tensor,
    k: int,
    *,
    metric: str = "cosine",
    backend: str = "auto",
    weight: Callable[[Tensor, Tensor], Tensor] | None = None,
    symmetric: bool = False,
) -> Graph:
    """The kNN graph of the points ``x``: an edge ``(i, j)`` for each of the k nearest
    neighbours ``j`` of ``i``, searched among all N points, ``i`` among them (usually found,
    as a self-loop; not always: a duplicate of ``i`` ties with it, and ``"ip"`` may rank a
    longer vector first), so that row ``i`` of W holds i's neighbours; with
    ``symmetric=True``, ``W + W^T``.

    Parameters
    ----------
    x : (N, D) floating tensor
        The points.
    k : int
        Neighbours per node (clamped to N with a warning).
    metric, backend : str
        As in :func:`knn`.
    weight : callable, optional
        ``weight(values, edge_index) -> (E,)`` giving each edge's weight from the kNN values
        (E,) and the edges (2, E) of the directed graph (E = N * k). Default: for
        ``"cosine"``/``"ip"`` the similarity clamped at 0, for ``"l2"`` 1 (an unweighted
        graph).
    symmetric : bool
        Return ``W + W^T``, equal to ``symmetrize(knn_graph(...))``: an edge found from both
        sides gets both weights, edges sorted by (source, target), explicit zero weights
        kept. On the CPU it is built from the kNN lists directly (numba), without the
        general sort.

    Returns
    -------
    Graph
        N * k edges, row by row (``symmetric=False``), or the coalesced ``W + W^T``
        (``symmetric=True``).
    """
    values, indices = _search(x, k, None, metric, backend, ordered=not symmetric)
    n, kk = indices.shape
    rows = torch.arange(n, device=x.device).repeat_interleave(kk)
    edge_index = torch.stack([rows, indices.reshape(-1)])
    values = values.reshape(-1)
    if weight is not None:
        w = weight(values, edge_index)
        w = check_tensor("weight(values, edge_index)", w, dims=("E",), floating=True)
        if w.shape != values.shape:
            raise ValueError(f"weight(values, edge_index) must return one weight per edge ({values.numel()}), "
                             f"got shape {tuple(w.shape)}")
    elif metric == "l2":
        w = torch.ones_like(values)
    else:
        w = values.clamp_min(0)
    if not symmetric:
        return Graph(edge_index, w, n)
    if _compiled_symmetrize(w):
        from ._knn_kernels import symmetric_knn

        edges, val = symmetric_knn(indices.contiguous().numpy(), w.reshape(n, kk).contiguous().numpy())
        return Graph(torch.from_numpy(edges), torch.from_numpy(val), n)
    return symmetrize(Graph(edge_index, w, n))


def _normalized_symmetric_graph(indices: Tensor, weights: Tensor) -> Graph:
    """``W_hat = D^-1/2 (W + W^T) D^-1/2`` without self-loops, in float64, of the kNN graph
    with ``W[i, indices[i, t]] = weights[i, t]``: what ``label_propagation`` solves on with
    ``normalize=False``, built in two compiled passes over the kNN lists (CPU, numba).

    Parameters
    ----------
    indices : (N, k) int64 tensor, the neighbours of each of the N nodes (any order; rows
        whose indices do not increase are sorted first)
    weights : (N, k) float32/float64 tensor, finite and >= 0, the weight of each
        ``(i, indices[i, t])``

    Returns
    -------
    Graph
        The entries of ``sym_normalize(remove_self_loops(symmetrize(g)).to(torch.float64))``
        for ``g`` the directed graph: ``W + W^T`` summed in the weights' dtype, then
        normalised in float64 (a zero degree counting as 1); edges sorted by (source,
        target), zero entries dropped. ``W_hat`` is symmetric by construction: the
        graph carries that (no exact symmetry check in the solver) and its CSR.
    """
    from ._knn_kernels import normalized_symmetric_knn

    check_tensor("weights", weights, dims=("N", "k"), floating=True)
    if indices.shape != weights.shape:
        raise ValueError(f"indices and weights must have one shape, got {tuple(indices.shape)} "
                         f"and {tuple(weights.shape)}")
    finite, nonnegative = finite_nonnegative(weights)
    if not (finite and nonnegative):
        raise ValueError("weights must be finite and >= 0")
    if indices.size(1) > 1 and not bool((indices[:, 1:] >= indices[:, :-1]).all()):
        indices, order = indices.sort(dim=1)
        weights = weights.gather(1, order)
    return _symmetric_csr_graph(*normalized_symmetric_knn(indices.contiguous().numpy(), weights.contiguous().numpy()))


def _symmetric_csr_graph(indptr: np.ndarray, columns: np.ndarray, values: np.ndarray,
                         edge_index: np.ndarray) -> Graph:
    """The :class:`Graph` of a symmetric matrix given as its canonical CSR, (N+1,) int64,
    (E,) int32, (E,) floating, and its (2, E) int64 edges: it carries its symmetry (no exact
    check in the solver) and its receiver CSR (that of its transpose, its own)."""
    graph = Graph(torch.from_numpy(edge_index), torch.from_numpy(values), indptr.shape[0] - 1)
    return graph._known(symmetric=True, receiver_csr=(indptr, columns, values))


def _compiled_symmetrize(w: Tensor) -> bool:
    """Whether ``W + W^T`` can be built by the numba kernel: CPU float32/float64 weights
    that need no gradient, numba importable."""
    from ._stencil import numba_available

    return (w.device.type == "cpu" and w.dtype in (torch.float32, torch.float64) and not w.requires_grad
            and numba_available())
