"""Weighted graphs in the PyG convention and the operations that compose on them.

A :class:`Graph` holds ``edge_index`` (2, E) int64, ``edge_weight`` (E,) and
``num_nodes``. It stands for the (N, N) weight matrix ``W`` with
``W[edge_index[0, e], edge_index[1, e]] = edge_weight[e]``, i.e. the same matrix as
``torch_geometric.utils.to_torch_coo_tensor(edge_index, edge_weight)``; duplicate
edges add up. It implements :class:`~graphprop.PropagationGraph`.

The operations :func:`degree`, :func:`symmetrize`, :func:`remove_self_loops` and
:func:`sym_normalize` are pure functions returning a new graph; each calls the
graph's own method of that name, so they take any :class:`~graphprop.PropagationGraph`
(a :class:`~graphprop.GridGraph` included) without knowing its class.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ._cache import cached_derived, store_derived
from ._protocol import GraphOperator, PropagationGraph, WeightsMixin, is_propagation_graph
from ._validation import check_int, check_tensor, finite_nonnegative, widened

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch_geometric.data import Data

__all__ = [
    "Graph",
    "symmetrize",
    "remove_self_loops",
    "sym_normalize",
    "degree",
]


@dataclass(frozen=True)
class Graph(WeightsMixin):
    """A weighted graph on ``num_nodes`` nodes, PyG conventions.

    Implements :class:`~graphprop.PropagationGraph`.

    Parameters
    ----------
    edge_index : Tensor
        (2, E) int64, row 0 the source ``i``, row 1 the target ``j`` of the entry
        ``W[i, j]`` (messages flow from ``i`` to ``j``).
    edge_weight : Tensor
        (E,) floating, finite, the entries of ``W`` (non-negative for propagation).
    num_nodes : int
        N, the number of nodes (isolated nodes included).

    Raises
    ------
    TypeError
        If an argument is not a tensor / an integer, or has the wrong dtype.
    ValueError
        For the wrong shapes, NaN/inf weights, different devices, or node indices
        outside ``[0, num_nodes)``. Each message names the argument.
    """

    edge_index: Tensor
    edge_weight: Tensor
    num_nodes: int
    auto_direct: ClassVar[bool] = True

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
        n = check_int("num_nodes", self.num_nodes, minimum=0)
        object.__setattr__(self, "num_nodes", n)  # a numpy integer stored as an int
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
    def weight_values(self) -> Tensor:
        """(E,) the stored weights, ``edge_weight`` (see :class:`~graphprop.PropagationGraph`)."""
        return self.edge_weight

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
        """From a torch sparse (N, N) matrix.

        Parameters
        ----------
        matrix : Tensor
            (N, N) torch sparse, COO, CSR or CSC: its stored entries become edges
            (explicit zeros are kept, duplicate COO entries summed).

        Returns
        -------
        Graph

        Raises
        ------
        TypeError
            If ``matrix`` is not a sparse tensor.
        ValueError
            If it is not square.
        """
        check_tensor("matrix", matrix, ndim=2)
        if matrix.size(0) != matrix.size(1):
            raise ValueError(f"matrix must be square (N, N), got shape {tuple(matrix.shape)}")
        if matrix.layout == torch.strided:
            raise TypeError("matrix must be a torch sparse tensor; use Graph.from_dense for dense")
        coo = matrix.to_sparse_coo().coalesce()
        return cls(coo.indices().to(torch.long), coo.values(), int(matrix.size(0)))

    @classmethod
    def from_dense(cls, matrix: Tensor) -> Graph:
        """From a dense weight matrix.

        Parameters
        ----------
        matrix : Tensor
            (N, N) floating: every non-zero entry ``matrix[i, j]`` becomes the edge
            ``(i, j)``.

        Returns
        -------
        Graph

        Raises
        ------
        TypeError
            If ``matrix`` is not a floating tensor.
        ValueError
            If it is not square (N, N).
        """
        check_tensor("matrix", matrix, ndim=2, floating=True)
        if matrix.size(0) != matrix.size(1):
            raise ValueError(f"matrix must be square (N, N), got shape {tuple(matrix.shape)}")
        index = matrix.nonzero().t().contiguous()
        return cls(index, matrix[index[0], index[1]], int(matrix.size(0)))

    @classmethod
    def from_pyg(cls, data: Data, weight_attr: str = "edge_weight") -> Graph:
        """From a ``torch_geometric.data.Data``.

        Parameters
        ----------
        data : torch_geometric.data.Data
            With ``edge_index`` (2, E) and ``num_nodes``.
        weight_attr : str
            The attribute holding the (E,) weights; without it, every edge gets weight 1.

        Returns
        -------
        Graph
        """
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
        """As a torch sparse CSR (N, N) tensor (duplicates summed).

        Edges already sorted by (source, target) without duplicates (e.g. the output
        of :func:`symmetrize`) are used as they are, without a sort.
        """
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

    def detach(self) -> Graph:
        """The graph with tensors that do not require grad (``self`` when none does).

        The detached graph shares the tensors' storage and version counters, and so
        this graph's cache of derived structures (:meth:`is_symmetric`).
        """
        if not (self.edge_index.requires_grad or self.edge_weight.requires_grad):
            return self
        detached = Graph(self.edge_index.detach(), self.edge_weight.detach(), self.num_nodes)
        detached.__dict__["_derived"] = self.__dict__.setdefault("_derived", {})
        return detached

    # ------------------------------------------------------------ operations
    def degree(self) -> Tensor:
        """Row sums of W (out-degrees).

        Returns
        -------
        Tensor
            (N,) ``d[i] = sum_j W[i, j]``, in the weights' dtype.
        """
        d = torch.zeros(self.num_nodes, dtype=self.dtype, device=self.device)
        return d.index_add_(0, self.edge_index[0], self.edge_weight)

    def symmetrize(self) -> Graph:
        """``W + W^T``, coalesced: an edge found from both sides gets both weights.

        Returns
        -------
        Graph
            Every edge in both directions, duplicates summed, sorted by (source, target).
        """
        ei = self.edge_index
        both = torch.cat([ei, ei.flip(0)], dim=1)
        weights = torch.cat([self.edge_weight, self.edge_weight])
        return Graph(both, weights, self.num_nodes).coalesce()

    def remove_self_loops(self) -> Graph:
        """The graph without its edges ``(i, i)``.

        Returns
        -------
        Graph
            The other edges, in their order.
        """
        keep = self.edge_index[0] != self.edge_index[1]
        return Graph(self.edge_index[:, keep], self.edge_weight[keep], self.num_nodes)

    def sym_normalize(self) -> Graph:
        """``D^-1/2 W D^-1/2`` with ``D`` the row sums of W; a zero degree counts as 1.

        Normalised in float64 whatever the graph's dtype, after scaling the weights
        by a power of two to the largest one (the result does not depend on the
        scale), then cast back to the graph's dtype: tiny weights (1e-300, or float32
        denormals) do not underflow and degree sums cannot overflow. Each weight is
        ``(w_ij * d_i^-1/2) * d_j^-1/2`` in that order.

        Returns
        -------
        Graph
            The same edges, normalised weights.

        Raises
        ------
        ValueError
            If a weight is negative.
        """
        if not finite_nonnegative(self.edge_weight)[1]:
            raise ValueError("graph must have non-negative edge weights to be normalised")
        return _normalized(self, self.edge_index[0], zero_degree=1.0)

    # --------------------------------------------------------------- products
    def matmul(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        """``W @ z``: ``out[i] = sum_j W[i, j] z[j]``.

        Parameters
        ----------
        z : Tensor
            (N, E) float32 or float64 (torch's sparse product on CPU has no half
            precision), on the graph's device.
        out : Tensor, optional
            (N, E) of z's dtype, not aliasing ``z``: written and returned.

        Returns
        -------
        Tensor
            (N, E) in z's dtype. For many products with one graph, :meth:`operator`
            prepares the matrix once.

        Raises
        ------
        TypeError
            If ``z`` is not a floating tensor.
        ValueError
            If ``z`` is not (N, E) or is on another device.
        """
        z = _check_block(z, self.num_nodes, self.device)
        return self.operator(z.dtype)(z, out=out)

    def operator(self, dtype: torch.dtype | None = None) -> GraphOperator:
        """``z -> W @ z`` prepared once (a CSR matrix of W) for (N, E) ``z`` of ``dtype``.

        Parameters
        ----------
        dtype : torch.dtype, optional
            The dtype of the blocks it will be applied to (default the graph's).

        Returns
        -------
        GraphOperator
            The compiled CSR product on CPU (float32/float64, numba), else PyG's
            sparse product; the contract of :class:`~graphprop.GraphOperator`.
        """
        dtype = dtype or self.dtype
        if dtype in (torch.float32, torch.float64) and _csr_kernels_usable(self):
            from ._csr_kernels import CsrOperator

            return CsrOperator(*self._sender_csr(), normalize=False, dtype=dtype)
        from ._message_passing import WeightedSum

        return WeightedSum(self.to(dtype=dtype).to_sparse_csr())

    def propagation_operator(self, dtype: torch.dtype, *, normalize: bool) -> GraphOperator:
        """``z -> P @ z`` with label propagation's ``P = W_hat^T`` (rows = receiving nodes).

        Parameters
        ----------
        dtype : torch.dtype
            The dtype of the blocks it will be applied to.
        normalize : bool
            True: ``W_hat`` is :func:`in_degree_normalize` of W (PyG's ``gcn_norm``
            without self-loops, in float64, then cast); False: ``W_hat = W``.

        Returns
        -------
        GraphOperator
            The compiled CSR product of ``W^T`` (cached on the graph) on CPU, else
            PyG's ``adj_t`` product.
        """
        if _csr_kernels_usable(self):
            from ._csr_kernels import CsrOperator

            # cached on the graph: normalising 20M entries costs about a product (0.35 s)
            return self._cached(f"csr_operator/{normalize}/{dtype}",
                                lambda: CsrOperator(*self._receiver_csr(), normalize=normalize, dtype=dtype))
        from ._message_passing import WeightedSum

        g = in_degree_normalize(self) if normalize else self
        return WeightedSum(g._transposed().to(dtype=dtype).to_sparse_csr())  # rows = receiving nodes, PyG's adj_t

    # ------------------------------------------------- cached derived structures
    def is_symmetric(self) -> bool:
        """Whether ``W == W^T``.

        Returns
        -------
        bool
            After summing duplicate edges and dropping zero weights: the same edges in
            both directions, each weight within 16 units of float rounding (relative,
            in the weights' dtype) of its mirror. Exact, not a randomised test;
            computed once per graph and cached (recomputed if ``edge_index`` or
            ``edge_weight`` are modified in place; not cached for inference-mode
            tensors, which have no version counter).
        """
        return self._cached("symmetric", self._compute_symmetric)

    def _compute_symmetric(self) -> bool:
        rtol = 16 * torch.finfo(self.dtype).eps
        if _csr_kernels_usable(self):
            from . import _csr_kernels

            ei = self.edge_index.detach().numpy()
            # W's own CSR, without a transpose pass, when the edges are sorted
            forward = _csr_kernels.canonical_csr_if_sorted(ei[0], ei[1], self._kernel_weights(),
                                                           self.num_nodes)
            return _csr_kernels.is_symmetric(*self._receiver_csr(), rtol, transpose=forward)
        a, b = _coalesced_nonzero(self), _coalesced_nonzero(self._transposed())
        if not torch.equal(a.edge_index, b.edge_index):
            return False
        va, vb = a.edge_weight, b.edge_weight
        return bool(((va - vb).abs() <= rtol * torch.maximum(va.abs(), vb.abs())).all())

    def _sender_csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The canonical CSR matrix of ``W`` (rows = sending nodes ``edge_index[0]``,
        duplicates summed, zeros dropped) as numpy ``(indptr int64, indices int32,
        values)``; CPU and numba only. Cached."""

        def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            from . import _csr_kernels

            ei = self.edge_index.detach().numpy()
            return _csr_kernels.canonical_csr(ei[0], ei[1], self._kernel_weights(), self.num_nodes)

        return self._cached("sender_csr", build)

    def _kernel_weights(self) -> np.ndarray:
        """The weights as the compiled kernels read them: numpy, float16 and bfloat16
        upcast to float32 (exactly; numba has no 16-bit floats)."""
        return widened(self.edge_weight.detach()).numpy()

    def _receiver_csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The canonical CSR matrix of ``W^T`` (rows = receiving nodes
        ``edge_index[1]``, duplicates summed, zeros dropped) as numpy
        ``(indptr int64, indices int32, values)``; CPU and numba only. Cached."""

        def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            from . import _csr_kernels

            ei = self.edge_index.detach().numpy()
            return _csr_kernels.canonical_csr(ei[1], ei[0], self._kernel_weights(), self.num_nodes)

        return self._cached("receiver_csr", build)

    def _cached(self, name: str, compute: Any) -> Any:
        """``compute()`` cached on the (frozen) graph, keyed by the tensors' identity
        and in-place version counters so that an edited graph is never served stale."""
        return cached_derived(self, name, (self.edge_index, self.edge_weight), compute)

    def _known(self, **derived: Any) -> Graph:
        """This graph, with derived structures its builder knows by construction stored in
        the cache :meth:`_cached` reads (e.g. ``symmetric=True``, ``receiver_csr=...``), so
        that they are not computed again; dropped like any cached value if the tensors
        are edited in place. For builders inside graphprop."""
        store_derived(self, (self.edge_index, self.edge_weight), **derived)
        return self

    def _transposed(self) -> Graph:
        """``W^T``: every edge reversed."""
        return Graph(self.edge_index.flip(0), self.edge_weight, self.num_nodes)

    def __repr__(self) -> str:
        return (
            f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
            f"dtype={self.dtype}, device={self.device})"
        )


G = TypeVar("G", bound=PropagationGraph)


def degree(graph: PropagationGraph) -> Tensor:
    """Row sums of W (out-degrees): ``graph.degree()``.

    Parameters
    ----------
    graph : PropagationGraph
        A :class:`Graph`, a :class:`~graphprop.GridGraph` or any graph of the protocol.

    Returns
    -------
    Tensor
        (N,) ``d[i] = sum_j W[i, j]``, in the weights' dtype.
    """
    return _checked(graph).degree()


def symmetrize(graph: G) -> G:
    """``W + W^T``: ``graph.symmetrize()``.

    Every edge is added in both directions and duplicates summed, so an edge found
    from both sides gets both weights.

    Parameters
    ----------
    graph : PropagationGraph
        A :class:`Graph`, a :class:`~graphprop.GridGraph` or any graph of the protocol.

    Returns
    -------
    PropagationGraph
        Of the same class: a :class:`Graph` result is coalesced; a
        :class:`~graphprop.GridGraph` stays a grid graph.
    """
    return _checked(graph).symmetrize()


def remove_self_loops(graph: G) -> G:
    """Drop every edge ``(i, i)``: ``graph.remove_self_loops()``.

    Parameters
    ----------
    graph : PropagationGraph
        A :class:`Graph`, a :class:`~graphprop.GridGraph` (which has none: returned
        as is) or any graph of the protocol.

    Returns
    -------
    PropagationGraph
        Of the same class.
    """
    return _checked(graph).remove_self_loops()


def sym_normalize(graph: G) -> G:
    """``D^-1/2 W D^-1/2`` with ``D`` the row sums of W; a zero degree counts as 1.

    ``graph.sym_normalize()``. A :class:`Graph` is normalised in float64 whatever its
    dtype, after scaling the weights by a power of two to the largest one (the result
    does not depend on the scale), then cast back to the graph's dtype: tiny weights
    (1e-300, or float32 denormals) do not underflow and degree sums cannot overflow.
    Each weight is ``(w_ij * d_i^-1/2) * d_j^-1/2`` in that order. A
    :class:`~graphprop.GridGraph` keeps its weights and gets ``scale = d^-1/2`` (the
    same numbers, computed in the stencil, in the grid's dtype).

    (``label_propagation`` normalises by in-degree, PyG's ``gcn_norm``: that is this
    function applied to ``W^T``; the two agree on symmetric graphs.)

    Parameters
    ----------
    graph : PropagationGraph
        A :class:`Graph`, a :class:`~graphprop.GridGraph` or any graph of the protocol.

    Returns
    -------
    PropagationGraph
        Of the same class.

    Raises
    ------
    TypeError
        If ``graph`` is not a graph.
    ValueError
        If a weight is negative.
    """
    return _checked(graph).sym_normalize()


def _checked(graph: G) -> G:
    """``graph`` if it implements :class:`~graphprop.PropagationGraph`, else a TypeError."""
    if not is_propagation_graph(graph):
        raise TypeError(f"graph must be a graphprop.Graph or GridGraph (a graphprop.PropagationGraph), "
                        f"got {type(graph).__name__}")
    return graph


def _check_block(z: object, num_nodes: int, device: torch.device) -> Tensor:
    """``z`` checked as an (N, E) floating block for a product with a graph on ``device``."""
    z = check_tensor("z", z, dims=("N", "E"), floating=True)
    if z.size(0) != num_nodes:
        raise ValueError(f"z must have N={num_nodes} rows for this graph, got {z.size(0)}")
    if z.device != device:
        raise ValueError(f"z must be on the graph's device {device}, got {z.device}")
    return z


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


def _coalesced_nonzero(graph: Graph) -> Graph:
    """Duplicates summed, sorted, zero weights dropped."""
    g = graph.coalesce()
    keep = g.edge_weight != 0
    return Graph(g.edge_index[:, keep], g.edge_weight[keep], g.num_nodes)


def _csr_kernels_usable(graph: Graph) -> bool:
    """Whether the numba CSR kernels apply: CPU tensors, int32-indexable nodes, numba."""
    from ._stencil import numba_available

    return graph.device.type == "cpu" and graph.num_nodes < 2**31 and numba_available()
