"""The stencil kernels (symmetric half-weight numba/torch, the fused CG step, the
non-symmetric fallback) against the explicit sparse matrix, and the denormal guarantees:
no weight a kernel reads and no CG vector entry is denormal, with the same results as
the unflushed computation in float64."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphprop as gp
from graphprop._propagation import _NumbaVectorOps, _TorchVectorOps
from graphprop._stencil import flush_denormals, is_mirrored, numba_available
from segmentation.color import LAB_SCALE, rgb_to_lab

SETTINGS = settings(max_examples=20, deadline=None)
KERNELS = ["torch"] + (["numba"] if numba_available() else [])
DTYPES = [torch.float32, torch.float64]

# grids wide enough for the 4-pixel register blocks (w >= 2 r + 4) and narrow ones
shapes = st.tuples(st.integers(1, 12), st.integers(1, 16), st.integers(1, 3), st.integers(0, 10_000))


def _denormal(t: torch.Tensor) -> torch.Tensor:
    return (t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)


@SETTINGS
@given(shapes, st.integers(1, 70), st.sampled_from(KERNELS), st.booleans(), st.sampled_from(DTYPES))
def test_symmetric_kernels_equal_explicit_sparse_matrix(shape, e, kernel, normalized, dtype):
    # e up to 70: 1 to 5 vectors of 16 columns, i.e. column chunks of 3 + 1 or 3 + 2
    h, w, radius, seed = shape
    gen = torch.Generator().manual_seed(seed)
    grid = gp.grid_graph(torch.rand(2, h, w, generator=gen, dtype=dtype), radius, 0.3)
    if normalized:
        grid = gp.sym_normalize(grid)
    op = grid.operator(dtype, kernel=kernel)
    assert op.symmetric
    z = torch.rand(h * w, e, generator=gen, dtype=dtype)
    dense = grid.to_sparse_coo().to_dense().double()
    out = op(z)
    assert out.shape == z.shape and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), dense @ z.double(), rtol=tol, atol=tol)


@SETTINGS
@given(shapes, st.sampled_from([16, 48, 64]), st.sampled_from(KERNELS), st.floats(0.05, 0.99))
def test_fused_shifted_dot_equals_dense(shape, e, kernel, alpha):
    """q = p - alpha W p and p . q in one pass, at a non-default alpha."""
    h, w, radius, seed = shape
    gen = torch.Generator().manual_seed(seed)
    grid = gp.sym_normalize(gp.grid_graph(torch.rand(3, h, w, generator=gen, dtype=torch.float64), radius, 0.2))
    p = torch.rand(h * w, e, generator=gen, dtype=torch.float64)
    q = torch.full_like(p, float("nan"))
    dots = grid.operator(torch.float64, kernel=kernel).shifted_dot(p, alpha, q)
    ref = p - alpha * (grid.to_sparse_coo().to_dense() @ p)
    torch.testing.assert_close(q, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dots, (p * ref).sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_non_mirrored_graph_uses_the_full_kernel(kernel):
    gen = torch.Generator().manual_seed(4)
    grid = gp.GridGraph(torch.rand(48, 7, 11, generator=gen), 3)  # not symmetric
    grid.weights[:, :3] = 0  # (out-of-grid entries are ignored anyway)
    op = grid.operator(torch.float32, kernel=kernel)
    assert not op.symmetric
    z = torch.rand(77, 20, generator=gen)
    dense = grid.to_sparse_coo().to_dense().double()
    torch.testing.assert_close(op(z).double(), dense @ z.double(), rtol=1e-5, atol=1e-6)


def test_mirror_record_is_dropped_when_the_weights_change():
    grid = gp.grid_graph(torch.rand(3, 9, 10), 2, 0.5)
    assert grid.is_mirrored and is_mirrored(gp.GridGraph(grid.weights, 2))
    grid.weights[3, 4, 5] += 1.0  # in place: no longer symmetric
    changed = gp.GridGraph(grid.weights, 2)
    assert not changed.is_mirrored
    z = torch.rand(90, 5)
    dense = changed.to_sparse_coo().to_dense()
    for kernel in KERNELS:
        torch.testing.assert_close(changed.matmul(z, kernel=kernel), dense @ z, rtol=1e-5, atol=1e-6)


def test_flush_denormals():
    for dtype in DTYPES:
        tiny = torch.finfo(dtype).tiny
        t = torch.tensor([0.0, tiny / 2, tiny, 1.5 * tiny, 1.0, tiny * (1 - 2**-20), tiny / 2**20], dtype=dtype)
        expected = torch.tensor([0.0, 0.0, tiny, 1.5 * tiny, 1.0, 0.0, 0.0], dtype=dtype)
        assert torch.equal(flush_denormals(t.clone(), nonnegative=True), expected)
        assert torch.equal(flush_denormals(torch.cat([t, -t])), torch.cat([expected, -expected]))


def _contrast_lab(h: int, w: int, seed: int) -> torch.Tensor:
    """Lab / LAB_SCALE of random saturated colours: many exp(-d / 0.01) underflow."""
    gen = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, h, w, generator=gen) > 0.5).float() * 0.9 + 0.05 * torch.rand(3, h, w, generator=gen)
    return rgb_to_lab(image) / torch.tensor(LAB_SCALE).view(3, 1, 1)


def test_no_weight_the_solver_uses_is_denormal_and_results_equal_unflushed():
    h, w, radius, tau = 23, 31, 4, 0.01
    lab = _contrast_lab(h, w, 0)
    # the unflushed float32 weights, offset by offset: plenty of denormals
    unflushed = torch.zeros(len(gp.grid_offsets(radius)), h, w)
    weight = gp.exp_distance_weight(tau)
    for o, (dy, dx) in enumerate(gp.grid_offsets(radius)):
        ys, xs = slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx))
        yq, xq = slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx))
        unflushed[o, ys, xs] = weight(lab[:, ys, xs], lab[:, yq, xq])
    assert int(_denormal(unflushed).sum()) > 100
    grid = gp.grid_graph(lab, radius, tau)
    assert not bool(_denormal(grid.weights).any())
    # to float rounding (an ulp of d / tau, up to ~100, is ~1e-5 relative in exp) and tiny
    torch.testing.assert_close(grid.weights, unflushed, rtol=2e-5, atol=torch.finfo(torch.float32).tiny)
    normalized = gp.sym_normalize(grid)
    for kernel in KERNELS:
        op = normalized.operator(torch.float32, kernel=kernel)
        assert op.weights.numel() and not bool(_denormal(op.weights).any())
    # the same solution as scipy's float64 CG on the unflushed weights, to float32 rounding
    import scipy.sparse.linalg as spl

    y = torch.rand(h * w, 7, generator=torch.Generator().manual_seed(1))
    z = gp.label_propagation(grid, y)
    w_hat = gp.sym_normalize(gp.grid_graph(lab.double(), radius, tau)).to_sparse_coo().to_dense().numpy()
    a = np.eye(h * w) - 0.95 * w_hat
    ref = np.stack([spl.cg(a, y[:, c].double().numpy(), rtol=1e-6, maxiter=10)[0] for c in range(7)], 1)
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ops", [_TorchVectorOps] + ([_NumbaVectorOps] if numba_available() else []))
def test_cg_vector_updates(ops):
    """step / direction / dot against step-by-step arithmetic; the numba ones also flush
    entries of r and p that would be denormal."""
    gen = torch.Generator().manual_seed(5)
    x, r, p, q = (torch.rand(300, 32, generator=gen) for _ in range(4))
    tiny = torch.finfo(torch.float32).tiny
    r[0, 0], q[0, 0] = 3 * tiny, 0.5 * tiny / 0.25  # r - 0.25 q = 2.5 tiny: normal
    r[1, 1], q[1, 1] = tiny, 0.5 * tiny / 0.25  # r - 0.25 q = 0.5 tiny: denormal
    step = torch.full((32,), 0.25)
    beta = torch.rand(32, generator=gen)
    x_ref, r_ref = x + step * p, r - step * q
    rr = ops.step(x, r, p, q, step)
    torch.testing.assert_close(x, x_ref)
    if ops is _NumbaVectorOps:
        assert float(r[1, 1]) == 0 and not bool(_denormal(r).any())
        r_ref = flush_denormals(r_ref)
    torch.testing.assert_close(r, r_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(rr, (r_ref * r_ref).sum(0))
    p_ref = beta * p + r
    ops.direction(p, r, beta)
    torch.testing.assert_close(p, p_ref)
    torch.testing.assert_close(ops.dot(p, q), (p * q).sum(0))


def test_denormal_scores_are_flushed_in_the_solve():
    grid = gp.grid_graph(torch.rand(3, 8, 9, dtype=torch.float64), 2, 0.3)
    y = torch.rand(72, 4, dtype=torch.float64)
    y[:10, 0] = torch.finfo(torch.float64).tiny / 4  # denormal scores
    z = gp.label_propagation(grid, y, solver="cg")
    ref = gp.label_propagation(grid.to_graph(), y, solver="cg")  # the default is "direct" at 72 nodes
    torch.testing.assert_close(z, ref, rtol=1e-10, atol=1e-300)
    assert np.isfinite(z.numpy()).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_grid_build_equals_the_torch_build(dtype):
    """grid_graph with a float tau (one compiled pass on CPU) against the same weights
    computed block by block in torch (a callable weight): equal to float rounding,
    exactly mirrored, no denormals."""
    lab = _contrast_lab(17, 26, 3).to(dtype)
    for tau in (0.01, 0.3):
        fast = gp.grid_graph(lab, 3, tau)
        slow = gp.grid_graph(lab, 3, weight_fn=gp.exp_distance_weight(tau))
        tiny = torch.finfo(dtype).tiny
        rtol = 2e-5 if dtype == torch.float32 else 1e-13  # an ulp of d / tau, amplified by exp
        torch.testing.assert_close(fast.weights, slow.weights, rtol=rtol, atol=tiny)
        assert is_mirrored(gp.GridGraph(fast.weights.clone(), 3))
        assert not bool(_denormal(fast.weights).any())


def test_inference_mode_graphs_are_checked_not_recorded():
    """Inference tensors have no version counter: their mirror check is redone, so an
    in-place change is still noticed."""
    lab = torch.rand(3, 9, 12)
    y = torch.rand(108, 3)
    expected = gp.label_propagation(gp.grid_graph(lab, 2, 0.3), y)
    with torch.inference_mode():
        grid = gp.grid_graph(lab, 2, 0.3)
        assert grid.is_mirrored
        torch.testing.assert_close(gp.label_propagation(grid, y), expected)
        grid.weights[5, 3, 3] += 1.0
        changed = gp.GridGraph(grid.weights, 2)
        assert not changed.is_mirrored
        z = torch.rand(108, 4)
        torch.testing.assert_close(changed.matmul(z), changed.to_sparse_coo().to_dense() @ z, rtol=1e-5, atol=1e-6)
