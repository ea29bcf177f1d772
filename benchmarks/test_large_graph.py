"""A large random graph: 1M nodes, about 20M edges (10M random pairs, ``W + W^T``),
10 float32 score columns, alpha 0.95, 10 iterations. graphprop's ``cg`` against
scipy's CG run once per column (the published solve) and PyG's 10-layer
``LabelPropagation`` on a prebuilt torch sparse CSR adjacency.

``GRAPHPROP_BENCH_NODES`` (comma-separated) sets the sizes: ``10000,100000,1000000``
gives the scaling table of benchmarks/README.md; the default is the 1M case.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import graphprop as gp
from benchmarks.workloads import ALPHA, MAX_ITER, TOL, baseline_solve, peak_memory_mb

SIZES = [int(s) for s in os.environ.get("GRAPHPROP_BENCH_NODES", "1000000").split(",")]
COLUMNS = 10
SETUP = """
import torch, graphprop as gp
from benchmarks.test_large_graph import random_graph
graph, y = random_graph({n})
"""


def random_graph(n: int, seed: int = 0) -> tuple[gp.Graph, torch.Tensor]:
    """(graph, y): ``W + W^T`` of ``10 n`` uniformly random float32-weighted pairs (self-loops
    dropped: PyG would keep them in its normalisation, graphprop drops them),
    and (n, 10) float32 scores."""
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, n, (2, 10 * n), generator=gen)
    graph = gp.symmetrize(gp.remove_self_loops(gp.Graph(pairs, torch.rand(10 * n, generator=gen), n)))
    return graph, torch.rand(n, COLUMNS, generator=gen)


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"n{n}")
def workload(request):
    return random_graph(request.param)


@pytest.fixture(scope="module")
def reference(workload):
    """scipy's per-column CG on the workload, computed once."""
    graph, y = workload
    return baseline_solve(_scipy_matrix(graph), y.numpy())


def _graphprop_cold(graph: gp.Graph, y: torch.Tensor) -> torch.Tensor:
    """A first call on a new Graph object: exact symmetry check, CSR build and
    normalisation included."""
    fresh = gp.Graph(graph.edge_index, graph.edge_weight, graph.num_nodes)
    return gp.label_propagation(fresh, y, alpha=ALPHA, tol=TOL, max_iter=MAX_ITER, solver="cg")


def _graphprop_warm(graph: gp.Graph, y: torch.Tensor) -> torch.Tensor:
    """A later call on the same Graph (check, CSR and normalised operator cached on it)."""
    return gp.label_propagation(graph, y, alpha=ALPHA, tol=TOL, max_iter=MAX_ITER, solver="cg")


def _scipy_matrix(graph: gp.Graph):
    import scipy.sparse as sp

    g = gp.sym_normalize(gp.remove_self_loops(graph))
    ei = g.edge_index.numpy()
    return sp.csr_matrix((g.edge_weight.numpy(), (ei[0], ei[1])), shape=(graph.num_nodes,) * 2)


def _pyg_adjacency(graph: gp.Graph) -> torch.Tensor:
    """PyG's ``adj_t`` (rows = targets) as a torch sparse CSR tensor, unnormalised:
    ``LabelPropagation`` normalises it with ``gcn_norm`` in its forward."""
    return gp.Graph(graph.edge_index.flip(0), graph.edge_weight, graph.num_nodes).to_sparse_csr()


def _pyg(adj_t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from torch_geometric.nn import LabelPropagation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return LabelPropagation(num_layers=MAX_ITER, alpha=ALPHA)(y, adj_t, post_step=lambda t: t)


@pytest.mark.parametrize("impl", ["graphprop_cold", "graphprop_warm", "scipy_per_column", "pyg_prebuilt"])
def test_large_graph_solve(benchmark, workload, reference, impl):
    graph, y = workload
    if impl == "scipy_per_column":
        matrix = _scipy_matrix(graph)
        benchmark.pedantic(baseline_solve, args=(matrix, y.numpy()), rounds=2, iterations=1)
        return
    if impl == "pyg_prebuilt":
        adj_t = _pyg_adjacency(graph)
        z = benchmark.pedantic(_pyg, args=(adj_t, y), rounds=2, iterations=1, warmup_rounds=1)
        fp = gp.label_propagation(graph, y, alpha=ALPHA, tol=0.0, max_iter=MAX_ITER, solver="fixed_point")
        torch.testing.assert_close(fp * (1 - ALPHA), z, rtol=1e-4, atol=1e-5)  # the same propagation
        return
    fn = _graphprop_cold if impl == "graphprop_cold" else _graphprop_warm
    z = benchmark.pedantic(fn, args=(graph, y), rounds=2, iterations=1, warmup_rounds=1)
    rel = float(np.abs(z.numpy() - reference).max() / np.abs(reference).max())
    benchmark.extra_info["max_relative_difference_to_scipy"] = rel
    assert rel < 1e-4


@pytest.mark.parametrize("impl", ["graphprop", "pyg_prebuilt"])
def test_large_graph_peak_memory(benchmark, impl):
    """Peak resident memory added by one solve over the graph and y (fresh process):
    graphprop's CSR cache and CG state against PyG's adjacency build and propagation."""
    n = SIZES[-1]
    statement = (
        "gp.label_propagation(graph, y, solver='cg')" if impl == "graphprop" else
        "from benchmarks.test_large_graph import _pyg, _pyg_adjacency\n_pyg(_pyg_adjacency(graph), y)"
    )
    mib = benchmark.pedantic(peak_memory_mb, args=(statement, SETUP.format(n=n)), rounds=1, iterations=1)
    benchmark.extra_info["peak_mib"] = mib
