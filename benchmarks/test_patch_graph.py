"""LPOSS patch graph: 2,940 nodes, D=768, k=400, 46 columns, 10 CG iterations (float64,
as published), graphprop vs numpy top-k + scipy sparse + one scipy CG per column."""

import numpy as np
import pytest

import graphprop as gp
from benchmarks.workloads import ALPHA, MAX_ITER, TOL, baseline_patch_graph, baseline_solve, patch_graph, patch_workload


@pytest.fixture(scope="module")
def workload():
    return patch_workload()


def _graphprop(features, scores, centres):
    graph = patch_graph(features, centres)
    return gp.label_propagation(graph, scores.double(), alpha=ALPHA, tol=TOL, max_iter=MAX_ITER)


def _baseline(features, scores, centres):
    return baseline_solve(baseline_patch_graph(features, centres), scores.double().numpy())


@pytest.mark.parametrize("impl", ["baseline", "graphprop"])
def test_patch_graph_and_solve(benchmark, workload, impl):
    fn = _baseline if impl == "baseline" else _graphprop
    z = benchmark.pedantic(fn, args=workload, rounds=3, iterations=1, warmup_rounds=1)
    if impl == "graphprop":
        ref = _baseline(*workload)
        rel = np.abs(z.numpy() - ref).max() / np.abs(ref).max()
        benchmark.extra_info["max_relative_difference_to_baseline"] = float(rel)
        assert rel < 1e-6
