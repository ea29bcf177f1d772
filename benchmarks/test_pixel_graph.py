"""LPOSS+ pixel graph: build + 10 CG iterations on 46 columns, graphprop vs the
published approach (index lists, scipy CSR, one float64 scipy CG per column)."""

import numpy as np
import pytest
import torch

import graphprop as gp
from benchmarks.workloads import (
    ALPHA,
    COLUMNS,
    HEIGHT,
    MAX_ITER,
    RADIUS,
    TAU,
    TOL,
    WIDTH,
    baseline_pixel_build,
    baseline_solve,
    peak_memory_mb,
    pixel_workload,
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


PIXEL_MACS = HEIGHT * WIDTH * ((2 * RADIUS + 1) ** 2 - 1) * COLUMNS  # multiply-adds of one product


@pytest.mark.parametrize("kernel", ["numba", "numba_fused", "numba_full", "torch", "torch_csr"])
def test_pixel_product_per_iteration(benchmark, workload, kernel):
    """One W_hat @ Z product (the inner loop of every CG iteration): the symmetric numba
    stencil, the same fused with q = p - alpha W p and p.q, the all-weights pixel-major
    numba stencil (the kernel before, still used for non-symmetric grids), the torch
    stencil and torch CSR on the explicit matrix."""
    from graphprop import _numba_kernels
    from graphprop._stencil import _scaled_pixel_major

    lab, scores = workload
    graph = gp.sym_normalize(gp.grid_graph(lab, RADIUS, TAU))
    padded = torch.zeros(scores.size(0), 48)
    padded[:, :COLUMNS] = scores
    out = torch.empty_like(padded)
    if kernel == "torch_csr":
        csr = graph.to_graph().to_sparse_csr()
        benchmark.pedantic(torch.sparse.mm, args=(csr, scores), rounds=3, iterations=1, warmup_rounds=1)
    elif kernel == "numba_full":
        weights = _scaled_pixel_major(graph, torch.float32).numpy()
        args = (weights, padded.numpy(), out.numpy(), RADIUS)
        benchmark.pedantic(_numba_kernels.stencil, args=args, rounds=5, iterations=1, warmup_rounds=1)
    elif kernel == "numba_fused":
        op = graph.operator(torch.float32, kernel="numba")
        benchmark.pedantic(op.shifted_dot, args=(padded, ALPHA, out), rounds=7, iterations=1, warmup_rounds=1)
    else:
        op = graph.operator(scores.dtype, kernel=kernel)
        rounds = 7 if kernel == "numba" else 3
        benchmark.pedantic(op, args=(padded, out) if kernel == "numba" else (scores,), rounds=rounds,
                           iterations=1, warmup_rounds=1)
    best = benchmark.stats.stats.min
    benchmark.extra_info["gmac_per_s"] = PIXEL_MACS / best / 1e9
    print(f"\n{kernel}: {best * 1e3:.1f} ms, {PIXEL_MACS / best / 1e9:.1f} G multiply-adds/s (46 columns)")


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


# ------------------------------------------------------------ the machine's floor
PEAK_PIXELS, PEAK_VECTORS, PEAK_ROW = 4, 3, 100  # the stencil's register block; neighbours per call


def _peak_kernels():
    """The stencil's register block (4 pixels x 48 columns: 12 AVX-512 accumulators, the same
    loads) over a row of ``PEAK_ROW`` neighbours whose weights and z rows all differ, on data
    that stays in L1 (w: 104 floats, z: 19.5 KiB), repeated ``reps`` times by every numba
    thread. Every accumulator is summed into ``out`` (nothing the compiler could drop as
    dead), and without fast-math LLVM may not fold or reorder the multiply-adds."""
    import numba

    from graphprop._simd import LANES, scratch, store, window_row, zero

    row = window_row(PEAK_PIXELS, PEAK_VECTORS)
    width = PEAK_VECTORS * LANES

    @numba.njit(parallel=True, cache=True)
    def peak(w, z, reps, out):
        for t in numba.prange(out.shape[0]):
            acc = scratch(z.dtype)
            zero(acc, PEAK_PIXELS * PEAK_VECTORS)
            for _ in range(reps):
                row(acc, w, 0, 1, z, 0, width, width, PEAK_ROW)
            block = np.empty(PEAK_PIXELS * width, dtype=z.dtype)
            for v in range(PEAK_PIXELS * PEAK_VECTORS):
                store(acc, v * LANES, block, v * LANES)
            out[t] = block.astype(np.float64).sum()

    return peak


def _peak_expected(w: np.ndarray, z: np.ndarray, reps: int) -> float:
    """What one thread of the peak loop sums, in float64: reps x the sum over neighbours d,
    pixels j and columns of w[d + j] z[d + j, :] (z rows of 48, pixel j reading row d + j)."""
    width = z.shape[1]
    total = 0.0
    for j in range(PEAK_PIXELS):
        total += float(w[j : j + PEAK_ROW].astype(np.float64) @ z[j : j + PEAK_ROW, :width].astype(np.float64).sum(1))
    return reps * total


# Sanity bound on any measured fp32 multiply-add rate: today's x86 cores issue at most 32 fp32
# multiply-adds per cycle (two 512-bit FMA ports; Zen 4: 16) and run below 5 GHz.
MAX_MACS_PER_CORE = 32 * 5.0e9


def test_machine_peak_multiply_adds(benchmark):
    """fp32 multiply-adds/s: the stencil's inner loop on L1-resident data (all numba
    threads), and torch's float32 matrix product (MKL) for comparison. The loop's sum is
    checked against float64 numpy (the work was done) and its rate against the nominal
    bound of the cores (no loop optimised away)."""
    import os
    import time

    import numba

    peak = _peak_kernels()
    rng = np.random.default_rng(0)
    w = (rng.random(PEAK_ROW + PEAK_PIXELS) * 1e-3).astype(np.float32)
    z = rng.random((PEAK_ROW + PEAK_PIXELS, 48)).astype(np.float32)
    out = np.zeros(numba.get_num_threads(), np.float64)
    reps = 20000
    peak(w, z, 1, out)  # compile
    benchmark.pedantic(peak, args=(w, z, reps, out), rounds=5, iterations=1)
    np.testing.assert_allclose(out, _peak_expected(w, z, reps), rtol=1e-2)  # every multiply-add was done
    macs = out.size * reps * PEAK_ROW * PEAK_PIXELS * 48
    stencil = macs / benchmark.stats.stats.min / 1e9
    cores = min(out.size, len(os.sched_getaffinity(0)))
    assert stencil * 1e9 < cores * MAX_MACS_PER_CORE, f"{stencil:.0f} G/s is above what {cores} cores can do"
    a = torch.rand(2048, 2048)
    torch.mm(a, a)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, a)
        ts.append(time.perf_counter() - t0)
    sgemm = 2048**3 / min(ts) / 1e9
    benchmark.extra_info["stencil_loop_gmac_per_s"] = stencil
    benchmark.extra_info["torch_sgemm_gmac_per_s"] = sgemm
    print(f"\nstencil inner loop, L1-resident: {stencil:.1f} G multiply-adds/s; torch sgemm: {sgemm:.1f}")


def test_machine_memory_bandwidth(benchmark):
    """Bytes/s of a large copy (read + write), the bound for streaming the weights."""
    src = torch.rand(64 * 2**20)  # 256 MiB
    dst = torch.empty_like(src)
    benchmark.pedantic(dst.copy_, args=(src,), rounds=5, iterations=1, warmup_rounds=1)
    gbs = 2 * src.numel() * 4 / benchmark.stats.stats.min / 1e9
    benchmark.extra_info["copy_gb_per_s"] = gbs
    print(f"\ncopy: {gbs:.1f} GB/s (read + write)")
