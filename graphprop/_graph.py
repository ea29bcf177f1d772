"""Weighted graphs in the PyG convention and the operations that compose on them.

A :class:`Graph` holds ``edge_index`` (2, E) int64, ``edge_weight`` (E,) and
``num_nodes``. It stands for the (N, N) weight matrix ``W`` with
``W[edge_index[0, e], edge_index[1, e]] = edge_weight[e]``, i.e. the same matrix as
``torch_geometric.utils.to_torch_coo_tensor(edge_index, edge_weight)``; duplicate
edges add up. Operations are pure functions returning a new graph.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import torch
from torch import Tensor

from ._validation import check_positive_int, check_tensor, finite_nonnegative

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch_geometric.data import Data
    from typing_extensions import TypeIs

    from ._grid import GridGraph

__all__ = [
    "Graph",
    "symmetrize",
    "remove_self_loops",
    "sym_normalize",
    "degree",
]


@dataclass(frozen=True)
class Graph:
    """A weighted graph on ``num_nodes`` nodes, PyG conventions.

    Attributes:
        edge_index: (2, E) int64, row 0 the source ``i``, row 1 the target ``j`` of
            the entry ``W[i, j]``.
        edge_weight: (E,) floating, the entries of ``W`` (non-negative for
            propagation).
        num_nodes: N, the number of nodes (isolated nodes included).

    The constructor validates shapes, dtypes, index range and finiteness, with
    errors that name the argument.
    """

    edge_index: Tensor
    edge_weight: Tensor
    num_nodes: int

    def __post_init__(self) -> None:
        ei = check_tensor("edge_index", self.edge_index, dims=("2", "E"))
        if ei.size(0) != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(ei.shape)}")
        if ei.dtype != torch.long:
            raise TypeError(f"edge_index must be int64 (torch.long), got {ei.dtype}")
        w = check_tensor("edge_weight", self.edge_weight, dims=("E",), floating=True)
        if not finite_nonnegative(w)[0]:
            raise ValueError("edge_weight contains NaN or infinite values")
        if w.numel() != ei.size(1):
            raise ValueError(
                f"edge_weight must have one entry per edge: edge_index has {ei.size(1)} "
                f"edges, edge_weight has {w.numel()}"
            )
        if w.device != ei.device:
            raise ValueError(
                f"edge_index and edge_weight must be on one device, got {ei.device} and {w.device}"
            )
        n = check_positive_int("num_nodes", self.num_nodes, minimum=0)
        if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
            raise ValueError(
                f"edge_index must hold node indices in [0, num_nodes={n}), "
                f"got range [{int(ei.min())}, {int(ei.max())}]"
            )

    # ------------------------------------------------------------------ basics
    @property
    def num_edges(self) -> int:
        """E, the number of stored edges (duplicates counted)."""
        return int(self.edge_index.size(1))

    @property
    def device(self) -> torch.device:
        return self.edge_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.edge_weight.dtype

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Graph:
        """A copy on ``device`` with weights of ``dtype`` (either may be None)."""
        return Graph(
            self.edge_index.to(device=device),
            self.edge_weight.to(device=device, dtype=dtype),
            self.num_nodes,
        )

    def coalesce(self) -> Graph:
        """Duplicate edges summed, edges sorted by (source, target)."""
        return Graph.from_sparse(self.to_sparse_coo())

    # ------------------------------------------------------------ conversions
    @classmethod
    def from_sparse(cls, matrix: Tensor) -> Graph:
        """From a torch sparse (N, N) matrix (COO, CSR or CSC); the stored entries become
        edges (explicit zeros are kept, duplicate COO entries summed)."""
        check_tensor("matrix", matrix, ndim=2)
        if matrix.size(0) != matrix.size(1):
            raise ValueError(f"matrix must be square (N, N), got shape {tuple(matrix.shape)}")
        if matrix.layout == torch.strided:
            raise TypeError("matrix must be a torch sparse tensor; use Graph.from_dense for dense")
        coo = matrix.to_sparse_coo().coalesce()
        return cls(coo.indices().to(torch.long), coo.values(), int(matrix.size(0)))

    @classmethod
    def from_dense(cls, matrix: Tensor) -> Graph:
        """From a dense (N, N) weight matrix: every non-zero entry becomes an edge."""
        check_tensor("matrix", matrix, ndim=2, floating=True)
        if matrix.size(0) != matrix.size(1):
            raise ValueError(f"matrix must be square (N, N), got shape {tuple(matrix.shape)}")
        index = matrix.nonzero().t().contiguous()
        return cls(index, matrix[index[0], index[1]], int(matrix.size(0)))

    @classmethod
    def from_pyg(cls, data: Data, weight_attr: str = "edge_weight") -> Graph:
        """From a ``torch_geometric.data.Data``; edges without weights get weight 1."""
        weight = getattr(data, weight_attr, None)
        if weight is None:
            weight = torch.ones(data.edge_index.size(1), device=data.edge_index.device)
        return cls(data.edge_index, weight.reshape(-1), int(data.num_nodes))

    def to_pyg(self) -> Data:
        """As a ``torch_geometric.data.Data`` with ``edge_index``, ``edge_weight``, ``num_nodes``."""
        from torch_geometric.data import Data

        return Data(edge_index=self.edge_index, edge_weight=self.edge_weight, num_nodes=self.num_nodes)

    def to_sparse_coo(self) -> Tensor:
        """As a coalesced torch sparse COO (N, N) tensor (duplicates summed)."""
        n = self.num_nodes
        # indices were range-checked on construction
        return torch.sparse_coo_tensor(
            self.edge_index, self.edge_weight, (n, n), check_invariants=False
        ).coalesce()

    def to_sparse_csr(self) -> Tensor:
        """As a torch sparse CSR (N, N) tensor (duplicates summed). Edges already
        sorted by (source, target) without duplicates (e.g. the output of
        :func:`symmetrize`) are used as they are, without a sort."""
        n = self.num_nodes
        row, col = self.edge_index
        key = row * n + col
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            if key.numel() < 2 or bool((key[1:] > key[:-1]).all()):
                crow = torch.zeros(n + 1, dtype=torch.long, device=self.device)
                crow[1:] = torch.bincount(row, minlength=n).cumsum(0)
                return torch.sparse_csr_tensor(crow, col, self.edge_weight, (n, n), check_invariants=False)
            return self.to_sparse_coo().to_sparse_csr()

    def to_dense(self) -> Tensor:
        """As a dense (N, N) tensor (duplicates summed). For tests and small graphs."""
        n = self.num_nodes
        dense = torch.zeros(n, n, dtype=self.dtype, device=self.device)
        return dense.index_put_((self.edge_index[0], self.edge_index[1]), self.edge_weight, accumulate=True)

    # ------------------------------------------------- cached derived structures
    def is_symmetric(self) -> bool:
        """Whether ``W == W^T``: after summing duplicate edges and dropping zero
        weights, the same edges in both directions, each weight within 16 units of
        float rounding (relative, in the weights' dtype) of its mirror. Exact, not a
        randomised test; computed once per graph and cached (recomputed if
        ``edge_index`` or ``edge_weight`` are modified in place; not cached for
        inference-mode tensors, which have no version counter)."""
        return self._cached("symmetric", self._compute_symmetric)

    def _compute_symmetric(self) -> bool:
        rtol = 16 * torch.finfo(self.dtype).eps
        if _csr_kernels_usable(self):
            from . import _csr_kernels

            ei = self.edge_index.detach().numpy()
            # W's own CSR, without a transpose pass, when the edges are sorted
            forward = _csr_kernels.canonical_csr_if_sorted(ei[0], ei[1], self.edge_weight.detach().numpy(),
                                                           self.num_nodes)
            return _csr_kernels.is_symmetric(*self._receiver_csr(), rtol, transpose=forward)
        a, b = _coalesced_nonzero(self), _coalesced_nonzero(self._transposed())
        if not torch.equal(a.edge_index, b.edge_index):
            return False
        va, vb = a.edge_weight, b.edge_weight
        return bool(((va - vb).abs() <= rtol * torch.maximum(va.abs(), vb.abs())).all())

    def _receiver_csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The canonical CSR matrix of ``W^T`` (rows = receiving nodes
        ``edge_index[1]``, duplicates summed, zeros dropped) as numpy
        ``(indptr int64, indices int32, values)``; CPU and numba only. Cached."""

        def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            from . import _csr_kernels

            ei = self.edge_index.detach().numpy()
            return _csr_kernels.canonical_csr(ei[1], ei[0], self.edge_weight.detach().numpy(), self.num_nodes)

        return self._cached("receiver_csr", build)

    def _cached(self, name: str, compute: Any) -> Any:
        """``compute()`` cached on the (frozen) graph, keyed by the tensors' identity
        and in-place version counters so that an edited graph is never served stale."""
        if self.edge_index.is_inference() or self.edge_weight.is_inference():
            return compute()  # no version counter to see in-place edits by: not cached
        key = self._cache_key()
        cache = self.__dict__.setdefault("_derived", {})
        hit = cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        cache[name] = (key, value)
        return value

    def _cache_key(self) -> tuple[int, int, int, int]:
        return (self.edge_index.data_ptr(), self.edge_index._version,
                self.edge_weight.data_ptr(), self.edge_weight._version)

    def _known(self, **derived: Any) -> Graph:
        """This graph, with derived structures its builder knows by construction stored in
        the cache :meth:`_cached` reads (e.g. ``symmetric=True``, ``receiver_csr=...``), so
        that they are not computed again; dropped like any cached value if the tensors
        are edited in place. For builders inside graphprop."""
        if not (self.edge_index.is_inference() or self.edge_weight.is_inference()):
            cache = self.__dict__.setdefault("_derived", {})
            for name, value in derived.items():
                cache[name] = (self._cache_key(), value)
        return self

    def _transposed(self) -> Graph:
        """``W^T``: every edge reversed."""
        return Graph(self.edge_index.flip(0), self.edge_weight, self.num_nodes)

    def __repr__(self) -> str:
        return (
            f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
            f"dtype={self.dtype}, device={self.device})"
        )


def degree(graph: Graph | GridGraph) -> Tensor:
    """Row sums of W: (N,) ``d[i] = sum_j W[i, j]``, in the weights' dtype."""
    if _is_grid(graph):
        return graph.degree()
    d = torch.zeros(graph.num_nodes, dtype=graph.dtype, device=graph.device)
    return d.index_add_(0, graph.edge_index[0], graph.edge_weight)


@overload
def symmetrize(graph: Graph) -> Graph: ...
@overload
def symmetrize(graph: GridGraph) -> GridGraph: ...
def symmetrize(graph: Graph | GridGraph) -> Graph | GridGraph:
    """``W + W^T``: every edge is added in both directions and duplicates summed, so an
    edge found from both sides gets both weights. A :class:`Graph` result is
    coalesced; a :class:`GridGraph` stays a grid graph."""
    if _is_grid(graph):
        return _symmetrize_grid(graph)
    ei = graph.edge_index
    both = torch.cat([ei, ei.flip(0)], dim=1)
    weights = torch.cat([graph.edge_weight, graph.edge_weight])
    return Graph(both, weights, graph.num_nodes).coalesce()


@overload
def remove_self_loops(graph: Graph) -> Graph: ...
@overload
def remove_self_loops(graph: GridGraph) -> GridGraph: ...
def remove_self_loops(graph: Graph | GridGraph) -> Graph | GridGraph:
    """Drop every edge ``(i, i)`` (a :class:`GridGraph` has none: returned as is)."""
    if _is_grid(graph):
        return graph
    keep = graph.edge_index[0] != graph.edge_index[1]
    return Graph(graph.edge_index[:, keep], graph.edge_weight[keep], graph.num_nodes)


@overload
def sym_normalize(graph: Graph) -> Graph: ...
@overload
def sym_normalize(graph: GridGraph) -> GridGraph: ...
def sym_normalize(graph: Graph | GridGraph) -> Graph | GridGraph:
    """``D^-1/2 W D^-1/2`` with ``D`` the row sums of W; a zero degree counts as 1.

    A :class:`Graph` is normalised in float64 whatever its dtype, after scaling the
    weights by a power of two to the largest one (the result does not depend on the
    scale), then cast back to the graph's dtype: tiny weights (1e-300, or float32
    denormals) do not underflow and degree sums cannot overflow. Each weight is
    ``(w_ij * d_i^-1/2) * d_j^-1/2`` in that order. A :class:`GridGraph` keeps its
    weights and gets ``scale = d^-1/2`` (the same numbers, computed in the stencil,
    in the grid's dtype).

    (``label_propagation`` normalises by in-degree, PyG's ``gcn_norm``: that is this
    function applied to ``W^T``; the two agree on symmetric graphs.)

    Raises:
        ValueError: if a weight is negative.
    """
    if _is_grid(graph):
        from ._grid import GridGraph

        base = graph.materialize()
        if not finite_nonnegative(base.weights)[1]:
            raise ValueError("graph must have non-negative edge weights to be normalised")
        return GridGraph(base.weights, base.radius, _inv_sqrt_degree(base.degree()))
    if not finite_nonnegative(graph.edge_weight)[1]:
        raise ValueError("graph must have non-negative edge weights to be normalised")
    return _normalized(graph, graph.edge_index[0], zero_degree=1.0)


def in_degree_normalize(graph: Graph) -> Graph:
    """PyG's ``gcn_norm(add_self_loops=False)`` without self-loops: self-loops dropped,
    ``w_ij * d_i^-1/2 * d_j^-1/2`` with ``d`` the in-degrees (column sums) and a zero
    in-degree giving 0 (a node nobody points to sends nothing), in float64 as
    :func:`sym_normalize`, then cast. On a symmetric graph it equals
    :func:`sym_normalize`."""
    graph = remove_self_loops(graph)
    return _normalized(graph, graph.edge_index[1], zero_degree=0.0)


def _normalized(graph: Graph, index: Tensor, zero_degree: float) -> Graph:
    """``w_ij * d_i^-1/2 * d_j^-1/2`` with ``d = sum of the weights at index``, in
    float64 on power-of-two-scaled weights, cast back to the graph's dtype."""
    w, scale = _power_of_two_scaled(graph.edge_weight.double())
    d = torch.zeros(graph.num_nodes, dtype=w.dtype, device=w.device).index_add_(0, index, w)
    # a zero degree counts as zero_degree in the weights' own units: ``scale`` once scaled
    d = torch.where(d > 0, d, torch.full_like(d, zero_degree * scale))
    positive = d > 0
    dinv = torch.where(positive, torch.where(positive, d, 1.0).sqrt().reciprocal(), 0.0)
    i, j = graph.edge_index
    return Graph(graph.edge_index, (w * dinv[i] * dinv[j]).to(graph.dtype), graph.num_nodes)


def _power_of_two_scaled(w: Tensor) -> tuple[Tensor, float]:
    """``(w * s, s)`` with ``s = 2^(1 - k)``, ``2^(k-1) <= max(w) < 2^k`` (exact; s = 1
    when all weights are zero; ``|log2 s| <= 1000``)."""
    top = w.max() if w.numel() else w.new_zeros(())
    if not bool(top > 0):
        return w, 1.0
    _, exponent = torch.frexp(top)
    shift = min(max(1 - int(exponent), -1000), 1000)  # 2^shift stays a float64
    return (w if shift == 0 else torch.ldexp(w, torch.tensor(float(shift), dtype=w.dtype))), 2.0**shift


def _inv_sqrt_degree(d: Tensor) -> Tensor:
    """``d^-1/2`` with a zero degree counted as 1."""
    return torch.where(d > 0, d, torch.ones_like(d)).sqrt().reciprocal()


def _coalesced_nonzero(graph: Graph) -> Graph:
    """Duplicates summed, sorted, zero weights dropped."""
    g = graph.coalesce()
    keep = g.edge_weight != 0
    return Graph(g.edge_index[:, keep], g.edge_weight[keep], g.num_nodes)


def _csr_kernels_usable(graph: Graph) -> bool:
    """Whether the numba CSR kernels apply: CPU tensors, int32-indexable nodes, numba."""
    from ._stencil import numba_available

    return graph.device.type == "cpu" and graph.num_nodes < 2**31 and numba_available()


def _is_grid(graph: object) -> TypeIs[GridGraph]:
    """Whether ``graph`` is a :class:`GridGraph` (else it is a :class:`Graph`: anything else raises)."""
    from ._grid import GridGraph

    if isinstance(graph, GridGraph):
        return True
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a graphprop.Graph or GridGraph, got {type(graph).__name__}")
    return False


def _symmetrize_grid(graph: GridGraph) -> GridGraph:
    """``W + W^T`` of a grid graph: ``W^T[p, p + o] = W[p + o, p]``, the opposite
    offset's weight read at the neighbour."""
    from ._grid import GridGraph, offset_blocks

    base = graph.materialize()
    h, w = base.height, base.width
    k = len(base.offsets)
    weights = base.weights.clone()
    for o, p, q in offset_blocks(base.offsets, h, w):
        weights[o][p] += base.weights[k - 1 - o][q]
    return GridGraph(weights, base.radius)
