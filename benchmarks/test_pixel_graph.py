"""LPOSS+ pixel graph: build + 10 CG iterations on 46 columns, graphprop vs the
published approach (index lists, scipy CSR, one float64 scipy CG per column)."""

import numpy as np
import pytest
import torch

import graphprop as gp
from benchmarks.workloads import (
    ALPHA, COLUMNS, HEIGHT, MAX_ITER, RADIUS, TAU, TOL, WIDTH, baseline_pixel_build,
    baseline_solve, peak_memory_mb, pixel_workload,
)

RESULTS: dict[str, np.ndarray] = {}


@pytest.fixture(scope="module")
def workload():
    return pixel_workload()


def _graphprop(lab, scores):
    graph = gp.grid_graph(lab, RADIUS, TAU)
    return gp.label_propagation(graph, scores, alpha=ALPHA, tol=TOL, max_iter=MAX_ITER)


def _baseline(lab, scores):
    return baseline_solve(baseline_pixel_build(lab), scores.numpy())


def test_pixel_build_and_solve_baseline(benchmark, workload):
    lab, scores = workload
    RESULTS["baseline"] = benchmark.pedantic(_baseline, args=workload, rounds=1, iterations=1)


def test_pixel_build_and_solve_graphprop(benchmark, workload):
    lab, scores = workload
    _graphprop(lab, scores)  # compile / load the numba kernels
    z = benchmark.pedantic(_graphprop, args=workload, rounds=3, iterations=1)
    if "baseline" not in RESULTS:
        RESULTS["baseline"] = _baseline(lab, scores)
    ref = RESULTS["baseline"]
    rel = np.abs(z.numpy() - ref).max() / np.abs(ref).max()
    benchmark.extra_info["max_relative_difference_to_baseline"] = float(rel)
    assert rel < 1e-4


@pytest.mark.parametrize("stage", ["build", "solve"])
@pytest.mark.parametrize("impl", ["baseline", "graphprop"])
def test_pixel_stage(benchmark, workload, stage, impl):
    lab, scores = workload
    if impl == "baseline":
        if stage == "build":
            benchmark.pedantic(baseline_pixel_build, args=(lab,), rounds=1, iterations=1)
        else:
            w_hat = baseline_pixel_build(lab)
            benchmark.pedantic(baseline_solve, args=(w_hat, scores.numpy()), rounds=1, iterations=1)
        return
    if stage == "build":
        benchmark.pedantic(gp.grid_graph, args=(lab, RADIUS, TAU), rounds=5, iterations=1, warmup_rounds=1)
    else:
        graph = gp.grid_graph(lab, RADIUS, TAU)
        benchmark.pedantic(gp.label_propagation, args=(graph, scores), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("kernel", ["numba", "torch", "torch_csr"])
def test_pixel_product_per_iteration(benchmark, workload, kernel):
    """One W_hat @ Z product (the inner loop of every CG iteration)."""
    lab, scores = workload
    graph = gp.sym_normalize(gp.grid_graph(lab, RADIUS, TAU))
    if kernel == "torch_csr":
        csr = graph.to_graph().to_sparse_csr()
        benchmark.pedantic(torch.sparse.mm, args=(csr, scores), rounds=3, iterations=1, warmup_rounds=1)
    else:
        op = graph.operator(scores.dtype, kernel=kernel)
        benchmark.pedantic(op, args=(scores,), rounds=3, iterations=1, warmup_rounds=1)


SETUP = """
import torch
from benchmarks.workloads import pixel_workload, baseline_pixel_build, baseline_solve
import graphprop as gp
lab, scores = pixel_workload()
gp.label_propagation(gp.grid_graph(lab[:, :32, :32], 6, 0.01), torch.rand(1024, 46))  # warm kernels
"""


@pytest.mark.parametrize("impl", ["baseline", "graphprop"])
def test_pixel_peak_memory(benchmark, impl):
    statement = (
        "baseline_solve(baseline_pixel_build(lab), scores.numpy())"
        if impl == "baseline"
        else "gp.label_propagation(gp.grid_graph(lab, 6, 0.01), scores)"
    )
    peak = benchmark.pedantic(peak_memory_mb, args=(statement, SETUP), rounds=1, iterations=1)
    benchmark.extra_info["peak_memory_mb"] = peak
    print(f"\n{impl}: peak memory {peak:.0f} MiB over the inputs ({HEIGHT}x{WIDTH}, {COLUMNS} columns)")
    if impl == "graphprop":
        assert peak < 1024
