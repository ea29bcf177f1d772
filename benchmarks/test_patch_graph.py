"""LPOSS patch stage: 2,940 nodes, D=768, k=400, 46 columns, 10 CG iterations (float64,
as published): ``segmentation.stages.patch_propagation`` (the pipeline's call) vs numpy
top-k + scipy sparse + one scipy CG per column, and vs the previous graphprop way (kNN,
directed edge list, ``symmetrize``, ``label_propagation`` normalising); then where the
pipeline's call spends its time (``test_patch_stage_breakdown``)."""

import numpy as np
import pytest
import torch

import graphprop as gp
from benchmarks.workloads import (
    ALPHA,
    MAX_ITER,
    TOL,
    baseline_patch_graph,
    baseline_solve,
    patch_workload,
)
from segmentation.stages import patch_propagation


@pytest.fixture(scope="module")
def workload():
    return patch_workload()


def _graphprop(features, scores, centres):
    return patch_propagation(features, scores.double(), centres, alpha=ALPHA, tol=TOL, max_iter=MAX_ITER)


def _previous(features, scores, centres, k=400):
    """The stage before issue 11: sorted kNN, the directed edge list, a general coalescing
    symmetrize, then label_propagation removing self-loops and normalising."""
    n = len(features)
    values, indices = gp.knn(features, k, metric="ip")
    rows = torch.arange(n).repeat_interleave(k)
    cols = indices.reshape(-1)
    weight = values.reshape(-1).clamp_min(0) ** 3.0 * torch.exp(-0.01 * (centres[rows] - centres[cols]).norm(dim=1))
    graph = gp.symmetrize(gp.Graph(torch.stack([rows, cols]), weight, n))
    return gp.label_propagation(graph.to(dtype=torch.float64), scores.double(), alpha=ALPHA, tol=TOL,
                                max_iter=MAX_ITER)


def _baseline(features, scores, centres):
    return baseline_solve(baseline_patch_graph(features, centres), scores.double().numpy())


IMPLS = {"baseline": _baseline, "previous": _previous, "graphprop": _graphprop}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_patch_graph_and_solve(benchmark, workload, impl):
    z = benchmark.pedantic(IMPLS[impl], args=workload, rounds=5, iterations=1, warmup_rounds=1)
    if impl != "baseline":
        ref = _baseline(*workload)
        rel = np.abs(z.numpy() - ref).max() / np.abs(ref).max()
        benchmark.extra_info["max_relative_difference_to_baseline"] = float(rel)
        assert rel < 1e-6


BREAKDOWN = ["similarity", "numpy_similarity", "selection", "torch_topk", "w_hat", "w_hat_from_lists", "product",
             "solve"]


@pytest.mark.parametrize("part", BREAKDOWN)
def test_patch_stage_breakdown(benchmark, workload, part):
    """The parts of ``patch_propagation`` on the CPU, each beside what it replaces: the (N, N)
    inner products as mirrored tiles of single-threaded BLAS calls (numpy's threaded call),
    the unordered top-k by the numba partial selection (torch.topk), W_hat with its weights
    straight from the similarity matrix (the weights of the kNN lists, then W_hat from the
    lists: the path beyond 4,096 nodes), one 48-column float64 product ``q = p - alpha P p``
    of the CG, and the whole 46-column float64 CG."""
    from graphprop._blas import inner_products
    from graphprop._knn import _normalized_symmetric_graph, _symmetric_csr_graph
    from graphprop._knn_kernels import select_topk
    from segmentation._patch_kernels import normalized_patch_graph, patch_weights
    from segmentation.stages import _solver_graph

    features, scores, centres = workload
    x, where = features.numpy(), centres.numpy()
    sims = inner_products(x, x, gram=True)
    values, indices = select_topk(sims, 400)

    def from_lists():
        weights = patch_weights(values, indices, where, 3.0, 0.01, 1.0)
        return _normalized_symmetric_graph(torch.from_numpy(indices), torch.from_numpy(weights))

    runs = {
        "similarity": (lambda: inner_products(x, x, gram=True), ()),
        "numpy_similarity": (lambda: x @ x.T, ()),
        "selection": (select_topk, (sims, 400)),
        "torch_topk": (torch.from_numpy(sims).topk, (400,), {"dim": 1, "sorted": False}),
        "w_hat": (lambda: _symmetric_csr_graph(*normalized_patch_graph(sims, indices, where, 3.0, 0.01, 1.0)), ()),
        "w_hat_from_lists": (from_lists, ()),
    }
    if part in ("product", "solve"):
        w_hat = _solver_graph(features, centres, k=400, gamma=3.0, sigma=0.01, pix_dist_pow=1.0)
        y = scores.double()

        def solve():
            return gp.label_propagation(w_hat, y, alpha=ALPHA, tol=TOL, max_iter=MAX_ITER, solver="cg",
                                        normalize=False, warn=False)

        if part == "product":
            from graphprop._csr_kernels import CsrOperator

            operator = CsrOperator(*w_hat._receiver_csr(), normalize=False, dtype=torch.float64)
            p = torch.rand(len(y), operator.padded_width(y.shape[1]), dtype=torch.float64)
            q = torch.empty_like(p)
            benchmark.extra_info["multiply_adds"] = int(operator.indices.shape[0]) * p.shape[1]
            benchmark.pedantic(operator.shifted_dot, args=(p, ALPHA, q), rounds=20, iterations=1, warmup_rounds=2)
            return
        benchmark.pedantic(solve, rounds=5, iterations=1, warmup_rounds=1)
        return
    fn, args, *kwargs = runs[part]
    benchmark.pedantic(fn, args=args, kwargs=kwargs[0] if kwargs else {}, rounds=5, iterations=1, warmup_rounds=1)
