"""The graph protocol the operations and solvers take, and the operator contract.

:class:`~graphprop.Graph` (an edge list) and :class:`~graphprop.GridGraph` (a
stencil) both implement :class:`PropagationGraph`; :func:`~graphprop.degree`,
:func:`~graphprop.symmetrize`, :func:`~graphprop.remove_self_loops`,
:func:`~graphprop.sym_normalize` and :func:`~graphprop.label_propagation` only
call these methods, so a new graph form (a user's class included) is one class
that implements them. This module imports nothing from the package (a leaf).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeGuard, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor
    from typing_extensions import Self

__all__ = ["GraphOperator", "PropagationGraph", "WeightsMixin", "is_propagation_graph"]


@runtime_checkable
class GraphOperator(Protocol):
    """A product ``z -> M @ z`` with (N, E) blocks, prepared once for repeated use.

    What :meth:`PropagationGraph.operator` and
    :meth:`PropagationGraph.propagation_operator` return, and what the solvers call
    every iteration.

    Attributes
    ----------
    column_multiple : int
        The column count the operator wants the block padded to: blocks whose
        ``E`` is a multiple of it (and contiguous) avoid a padded copy on every
        call (16 for the vectorised grid kernels, 1 = no preference). The CG
        allocates its state that wide, with zero columns.

    Notes
    -----
    The contract:

    - ``op(z)`` with ``z`` (N, E) of the dtype the operator was prepared for (the
      ``dtype`` argument that made it; float32 or float64 for the compiled CPU
      kernels) and on the graph's device returns ``M @ z``, (N, E) in that dtype.
      ``z`` may be non-contiguous (it is then copied); contiguous blocks whose ``E``
      is a multiple of :attr:`column_multiple` are read in place.
    - ``z`` is never written: the operator does not overwrite its input.
    - ``op(z, out=out)`` writes ``M @ z`` into ``out`` and returns ``out``. ``out``
      must be (N, E), of z's dtype and device, and must **not alias** ``z`` (nor
      overlap it): the kernels read ``z`` while they write ``out``. A contiguous
      ``out`` (with ``E`` a multiple of :attr:`column_multiple`) is written
      directly, another one through a temporary.
    - The product is linear and column-wise: column ``c`` of the result depends only
      on column ``c`` of ``z``; all-zero columns (padding) give all-zero columns.
    - Optional: ``shifted_dot(p, alpha, q) -> Tensor`` writes
      ``q = p - alpha * (M @ p)`` and returns (E,) the column sums of ``p * q`` in
      one pass (the CG's step on ``A = I - alpha M``); ``p`` and ``q`` (N, E)
      contiguous, distinct. The CG uses it when present (found with ``getattr``).
    - Optional: ``padded_width(e) -> int``, the block width (``>= e``) the operator
      prefers for ``e`` columns, where that depends on ``e`` (the CSR product pads
      46 float64 columns to 48, a whole number of vectors, but not 10 to 16). When
      present, the CG allocates its state that wide instead of rounding ``e`` up to
      :attr:`column_multiple`.
    """

    column_multiple: int

    def __call__(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        """``M @ z`` for (N, E) ``z``; written into ``out`` (and ``out`` returned) when given."""
        ...


@runtime_checkable
class PropagationGraph(Protocol):
    """A weighted graph on ``num_nodes`` nodes: the (N, N) matrix ``W``, PyG's direction.

    ``W[i, j]`` is the weight of the edge from node ``i`` (the source,
    ``edge_index[0]`` in PyG's terms) to node ``j`` (the target); label propagation
    sends messages from sources to targets. Implemented by
    :class:`~graphprop.Graph` and :class:`~graphprop.GridGraph`; the operations and
    solvers only use the members below. Operations return a new graph of the same
    class and never modify this one.

    Attributes
    ----------
    num_nodes : int
        N, the number of nodes.
    dtype : torch.dtype
        The dtype of the weights (a floating dtype).
    device : torch.device
        Where the weights are.
    weight_values : Tensor
        The stored weight entries (any shape: (E,) for an edge list, (K, H, W) for a
        grid), before any normalisation scale; the solvers check them finite and
        non-negative.
    auto_direct : bool (class attribute)
        Whether ``label_propagation(solver="auto")`` may solve this graph form
        densely when it is small (True for edge lists; False for grid graphs, which
        keep CG, their LPOSS setting).
    """

    auto_direct: ClassVar[bool]

    @property
    def num_nodes(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def weight_values(self) -> Tensor: ...

    def degree(self) -> Tensor:
        """(N,) the row sums of W, ``d[i] = sum_j W[i, j]`` (out-degrees), in the graph's dtype."""
        ...

    def is_symmetric(self) -> bool:
        """Whether ``W == W^T`` (to a few units of float rounding); cheap to ask twice."""
        ...

    def symmetrize(self) -> Self:
        """``W + W^T``, the same class."""
        ...

    def remove_self_loops(self) -> Self:
        """W with its diagonal dropped, the same class."""
        ...

    def sym_normalize(self) -> Self:
        """The normalised form ``D^-1/2 W D^-1/2``, ``D`` the row sums, a zero degree counted as 1.

        Raises ``ValueError`` if a weight is negative.
        """
        ...

    def detach(self) -> Self:
        """The same graph with tensors that do not require grad (``self`` when none does)."""
        ...

    def matmul(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        """``W @ z`` for (N, E) floating ``z`` on the graph's device, in z's dtype.

        Validates ``z``; ``out`` as in :class:`GraphOperator` (not aliasing ``z``).
        """
        ...

    def operator(self, dtype: torch.dtype | None = None) -> GraphOperator:
        """``z -> W @ z`` prepared once for (N, E) ``z`` of ``dtype`` (default the graph's)."""
        ...

    def propagation_operator(self, dtype: torch.dtype, *, normalize: bool) -> GraphOperator:
        """``z -> P @ z``, label propagation's ``P = W_hat^T`` (rows = receiving nodes).

        ``normalize=True``: ``W_hat = D^-1/2 W D^-1/2`` of W without self-loops, ``D``
        the in-degrees (PyG's ``gcn_norm(add_self_loops=False)``; a zero in-degree
        gives 0 on a :class:`~graphprop.Graph`, counts as 1 on a
        :class:`~graphprop.GridGraph`), computed in float64 (Graph) or the grid's
        dtype and cast to ``dtype``; ``normalize=False``: ``W_hat = W``. For (N, E)
        ``z`` of ``dtype``.
        """
        ...


class WeightsMixin:
    """For graph classes: ``device`` and ``dtype`` are those of ``weight_values``.

    A subclass defines :attr:`weight_values` (the stored weights); the mixin gives the
    two protocol members derived from it, written once for every graph form.
    """

    __slots__ = ()

    @property
    def weight_values(self) -> Tensor:
        """The stored weights (defined by the subclass)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return self.weight_values.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights."""
        return self.weight_values.dtype


_GRAPH_CLASSES: weakref.WeakSet[type] = weakref.WeakSet()  # classes seen to implement the protocol


def is_propagation_graph(obj: object) -> TypeGuard[PropagationGraph]:
    """``isinstance(obj, PropagationGraph)``, remembered per class once true.

    The structural check looks up every member (about 40 us on Python 3.11, as much as
    a small graph's degree); a class whose instance passed it once is taken to pass it
    again. A failed check is not remembered.
    """
    if type(obj) in _GRAPH_CLASSES:
        return True
    if isinstance(obj, PropagationGraph):
        _GRAPH_CLASSES.add(type(obj))
        return True
    return False
