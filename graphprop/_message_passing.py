"""The graph product ``W @ Z`` as a PyG message-passing layer (imported lazily:
importing torch_geometric takes about a second)."""

from __future__ import annotations

import warnings

from torch import Tensor

with warnings.catch_warnings():  # torch_geometric still calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from torch_geometric.nn import MessagePassing
    from torch_geometric.utils import spmm

from ._graph import Graph


class WeightedSum(MessagePassing):
    """``out[i] = sum_j W[i, j] * z[j]`` for a fixed :class:`~graphprop.Graph`.

    Like PyG's ``LabelPropagation`` it aggregates weighted neighbour messages with
    ``aggr="add"``; the graph is held as a torch sparse CSR matrix whose rows are the
    receiving nodes (PyG's ``adj_t``), so message and aggregation fuse into one
    sparse-times-dense product.
    """

    def __init__(self, graph: Graph) -> None:
        super().__init__(aggr="add")
        self.adj_t = graph.to_sparse_csr()

    def forward(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        """z: (N, E) -> (N, E), copied into ``out`` when given."""
        result = self.propagate(self.adj_t, x=z)
        return result if out is None else out.copy_(result)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:  # pragma: no cover
        return edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        return spmm(adj_t, x, reduce="sum")
