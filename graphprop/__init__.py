"""graphprop: exact kNN graphs and label propagation on any graph, PyG conventions.

Generic building blocks, useful beyond images:

- :func:`knn` / :func:`knn_graph`: exact k-nearest neighbours (blockwise torch or
  KeOps) and the graphs they make;
- :class:`Graph`: ``edge_index`` (2, E), ``edge_weight`` (E,), ``num_nodes``, with
  conversions to torch sparse and PyG ``Data``;
- :func:`symmetrize`, :func:`remove_self_loops`, :func:`sym_normalize`,
  :func:`degree`: composable operations;
- :func:`grid_graph` / :class:`GridGraph`: local-window graphs of images, applied
  as a stencil without an index list;
- :class:`PropagationGraph`: the protocol both graph forms implement and the
  operations and solvers take (size, dtype/device, degree, normalised form,
  symmetry, products with (N, E) blocks), and :class:`GraphOperator`, the contract
  of those products (``out=``, ``column_multiple``);
- :func:`label_propagation`: ``(I - alpha * P) Z = Y`` with PyG's conventions (messages
  from ``edge_index[0]`` to ``edge_index[1]``, in-degree normalisation), by batched
  conjugate gradient, fixed-point iteration (PyG ``LabelPropagation``), a dense solve,
  or ``"auto"`` (dense on small graphs). See ``docs/graphprop.md`` for the mapping of
  scikit-learn's and PyG's settings.

Outputs follow the inputs' device and dtype.

A path of four nodes, the first labelled class 0 and the last class 1 (``Z`` equals
``np.linalg.solve(I - 0.9 * D^-1/2 W D^-1/2, Y)``):

>>> import torch, graphprop as gp
>>> graph = gp.symmetrize(gp.Graph(torch.tensor([[0, 1, 2], [1, 2, 3]]), torch.ones(3), 4))
>>> y = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
>>> z = gp.label_propagation(graph, y, alpha=0.9)
>>> z.argmax(1).tolist(), [round(v, 4) for v in z[1].tolist()]
([0, 0, 1, 1], [2.499, 1.89])
"""

from ._graph import Graph, degree, remove_self_loops, sym_normalize, symmetrize
from ._grid import GridGraph, exp_distance_weight, grid_graph, grid_offsets
from ._knn import knn, knn_graph, select_knn_backend
from ._propagation import ConvergenceWarning, PropagationResult, label_propagation
from ._protocol import GraphOperator, PropagationGraph

__all__ = [
    "ConvergenceWarning",
    "Graph",
    "GraphOperator",
    "GridGraph",
    "PropagationGraph",
    "PropagationResult",
    "degree",
    "exp_distance_weight",
    "grid_graph",
    "grid_offsets",
    "knn",
    "knn_graph",
    "label_propagation",
    "remove_self_loops",
    "select_knn_backend",
    "sym_normalize",
    "symmetrize",
]

__version__ = "0.1.0"
