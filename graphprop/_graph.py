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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._validation import check_positive_int, check_tensor, finite_nonnegative

if TYPE_CHECKING:  # pragma: no cover
    from torch_geometric.data import Data

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

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "Graph":
        """A copy on ``device`` with weights of ``dtype`` (either may be None)."""
        return Graph(
            self.edge_index.to(device=device),
            self.edge_weight.to(device=device, dtype=dtype),
            self.num_nodes,
        )

    def coalesce(self) -> "Graph":
        """Duplicate edges summed, edges sorted by (source, target)."""
        return Graph.from_sparse(self.to_sparse_coo())

    # ------------------------------------------------------------ conversions
    @classmethod
    def from_sparse(cls, matrix: Tensor) -> "Graph":
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
    def from_dense(cls, matrix: Tensor) -> "Graph":
        """From a dense (N, N) weight matrix: every non-zero entry becomes an edge."""
        check_tensor("matrix", matrix, ndim=2, floating=True)
        if matrix.size(0) != matrix.size(1):
            raise ValueError(f"matrix must be square (N, N), got shape {tuple(matrix.shape)}")
        index = matrix.nonzero().t().contiguous()
        return cls(index, matrix[index[0], index[1]], int(matrix.size(0)))

    @classmethod
    def from_pyg(cls, data: "Data", weight_attr: str = "edge_weight") -> "Graph":
        """From a ``torch_geometric.data.Data``; edges without weights get weight 1."""
        weight = getattr(data, weight_attr, None)
        if weight is None:
            weight = torch.ones(data.edge_index.size(1), device=data.edge_index.device)
        return cls(data.edge_index, weight.reshape(-1), int(data.num_nodes))

    def to_pyg(self) -> "Data":
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

    def __repr__(self) -> str:
        return (
            f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
            f"dtype={self.dtype}, device={self.device})"
        )


def degree(graph: "Graph | GridGraph") -> Tensor:
    """Row sums of W: (N,) ``d[i] = sum_j W[i, j]``, in the weights' dtype."""
    if _is_grid(graph):
        return graph.degree()
    d = torch.zeros(graph.num_nodes, dtype=graph.dtype, device=graph.device)
    return d.index_add_(0, graph.edge_index[0], graph.edge_weight)


def symmetrize(graph: "Graph | GridGraph") -> "Graph | GridGraph":
    """``W + W^T``: every edge is added in both directions and duplicates summed, so an
    edge found from both sides gets both weights. A :class:`Graph` result is
    coalesced; a :class:`GridGraph` stays a grid graph."""
    if _is_grid(graph):
        return _symmetrize_grid(graph)
    ei = graph.edge_index
    both = torch.cat([ei, ei.flip(0)], dim=1)
    weights = torch.cat([graph.edge_weight, graph.edge_weight])
    return Graph(both, weights, graph.num_nodes).coalesce()


def remove_self_loops(graph: "Graph | GridGraph") -> "Graph | GridGraph":
    """Drop every edge ``(i, i)`` (a :class:`GridGraph` has none: returned as is)."""
    if _is_grid(graph):
        return graph
    keep = graph.edge_index[0] != graph.edge_index[1]
    return Graph(graph.edge_index[:, keep], graph.edge_weight[keep], graph.num_nodes)


def sym_normalize(graph: "Graph | GridGraph") -> "Graph | GridGraph":
    """``D^-1/2 W D^-1/2`` with ``D`` the row sums of W; a zero degree counts as 1.

    Each weight is ``(w_ij * d_i^-1/2) * d_j^-1/2`` in that order: in float32 a
    degree can be denormal, and forming ``d_i^-1/2 * d_j^-1/2`` first can overflow to
    inf (and give NaN), while this order stays finite. A :class:`GridGraph` keeps its
    weights and gets ``scale = d^-1/2`` (the same numbers, computed in the stencil).

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
    dinv = _inv_sqrt_degree(degree(graph))
    i, j = graph.edge_index
    return Graph(graph.edge_index, graph.edge_weight * dinv[i] * dinv[j], graph.num_nodes)


def _inv_sqrt_degree(d: Tensor) -> Tensor:
    """``d^-1/2`` with a zero degree counted as 1."""
    return torch.where(d > 0, d, torch.ones_like(d)).sqrt().reciprocal()


def _is_grid(graph: object) -> bool:
    from ._grid import GridGraph

    if isinstance(graph, GridGraph):
        return True
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a graphprop.Graph or GridGraph, got {type(graph).__name__}")
    return False


def _symmetrize_grid(graph: "GridGraph") -> "GridGraph":
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
