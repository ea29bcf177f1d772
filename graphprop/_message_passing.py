"""The graph product ``W @ Z`` as a PyG message-passing layer (imported lazily:
importing torch_geometric takes about a second)."""

from __future__ import annotations

import warnings

from torch import Tensor

with warnings.catch_warnings():  # torch_geometric still calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from torch_geometric.nn import MessagePassing
    from torch_geometric.utils import spmm


class WeightedSum(MessagePassing):
    """``out[i] = sum_j A[i, j] * z[j]`` for a fixed sparse (N, N) matrix ``A``.

    Like PyG's ``LabelPropagation`` it aggregates weighted neighbour messages with
    ``aggr="add"``; the matrix is held as a torch sparse CSR tensor whose rows are
    the receiving nodes (PyG's ``adj_t``), so message and aggregation fuse into one
    sparse-times-dense product. A :class:`~graphprop.GraphOperator`.

    Parameters
    ----------
    adj_t : Tensor
        (N, N) torch sparse CSR, row ``i`` the weights node ``i`` receives with
        (``W^T`` of a graph for label propagation, ``W`` for ``W @ z``), in the
        dtype of the blocks it will be applied to.
    """

    column_multiple = 1  # any block width: spmm reads the columns as they are

    def __init__(self, adj_t: Tensor) -> None:
        super().__init__(aggr="add")
        self.adj_t = adj_t

    def forward(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        """z: (N, E) -> (N, E), copied into ``out`` (returned) when given."""
        result = self.propagate(self.adj_t, x=z)
        return result if out is None else out.copy_(result)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:  # pragma: no cover
        return edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        return spmm(adj_t, x, reduce="sum")
