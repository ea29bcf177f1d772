"""Grid graphs: the stencil against its explicit sparse matrix, the weights against a
per-edge computation, both kernels against each other, propagation on grids."""

import os
import re
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphprop as gp
from graphprop._stencil import numba_available
from segmentation.color import LAB_SCALE, rgb_to_lab

SETTINGS = settings(max_examples=25, deadline=None)
KERNELS = ["torch"] + (["numba"] if numba_available() else [])

shapes = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.integers(0, 10_000))


def explicit_weights(signal: torch.Tensor, radius: int, tau: float) -> torch.Tensor:
    """Dense (N, N) W by brute force: every pixel pair within the window, one by one."""
    c, h, w = signal.shape
    f = signal.reshape(c, -1).T.double()
    n = h * w
    dense = torch.zeros(n, n, dtype=torch.float64)
    for p in range(n):
        for q in range(n):
            (py, px), (qy, qx) = divmod(p, w), divmod(q, w)
            if p != q and abs(py - qy) <= radius and abs(px - qx) <= radius:
                dense[p, q] = torch.exp(-torch.linalg.norm(f[p] - f[q]) / tau)
    return dense


@SETTINGS
@given(shapes)
def test_grid_weights_equal_per_edge_computation(shape):
    h, w, radius, seed = shape
    signal = torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grid = gp.grid_graph(signal, radius, 0.5)
    torch.testing.assert_close(grid.to_sparse_coo().to_dense(), explicit_weights(signal, radius, 0.5))


@SETTINGS
@given(shapes, st.integers(1, 40), st.sampled_from(KERNELS), st.booleans())
def test_stencil_equals_explicit_sparse_matrix(shape, e, kernel, normalized):
    h, w, radius, seed = shape
    gen = torch.Generator().manual_seed(seed)
    grid = gp.grid_graph(torch.rand(2, h, w, generator=gen), radius, 0.3)
    if normalized:
        grid = gp.sym_normalize(grid)
    z = torch.rand(h * w, e, generator=gen)
    dense = grid.to_sparse_coo().to_dense().double()
    out = grid.matmul(z, kernel=kernel)
    assert out.shape == z.shape and out.dtype == z.dtype
    torch.testing.assert_close(out.double(), dense @ z.double(), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(shapes)
def test_normalized_grid_equals_normalized_explicit_graph(shape):
    h, w, radius, seed = shape
    signal = torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grid = gp.grid_graph(signal, radius, 0.2)
    torch.testing.assert_close(
        gp.sym_normalize(grid).to_sparse_coo().to_dense(),
        gp.sym_normalize(grid.to_graph()).to_dense(),
    )
    torch.testing.assert_close(gp.degree(grid), gp.degree(grid.to_graph()))


def test_kernels_agree_on_a_large_grid_both_dtypes():
    if "numba" not in KERNELS:
        pytest.skip("numba is not installed: only the torch kernel exists")
    gen = torch.Generator().manual_seed(0)
    lab = rgb_to_lab(torch.rand(3, 61, 83, generator=gen)) / torch.tensor(LAB_SCALE).view(3, 1, 1)
    grid = gp.sym_normalize(gp.grid_graph(lab, 6, 0.01))
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        z = torch.rand(61 * 83, 46, generator=gen, dtype=dtype)
        a = grid.matmul(z, kernel="numba")
        b = grid.matmul(z, kernel="torch")
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_interior_pixels_have_all_window_neighbours():
    grid = gp.grid_graph(torch.zeros(1, 20, 20), 6, 0.01)  # equal colours: weight 1
    count = (grid.weights > 0).sum(0)
    assert int(count[10, 10]) == 168 == len(gp.grid_offsets(6))
    assert int(count[0, 0]) == 7 * 7 - 1  # a corner sees a quarter window
    assert int(count[0, 10]) == 7 * 13 - 1


def test_grid_is_exactly_symmetric_with_a_custom_weight():
    signal = torch.rand(4, 12, 15, dtype=torch.float64)

    def cosine_weight(fp, fq):
        return torch.nn.functional.cosine_similarity(fp, fq, dim=0).clamp_min(0)

    grid = gp.grid_graph(signal, 3, weight_fn=cosine_weight)
    dense = grid.to_sparse_coo().to_dense()
    assert torch.equal(dense, dense.T)
    f = signal.reshape(4, -1).T
    p, q = 5 * 15 + 7, 7 * 15 + 9  # (5, 7) and (7, 9): offset (2, 2)
    torch.testing.assert_close(dense[p, q], torch.nn.functional.cosine_similarity(f[p], f[q], dim=0))


def test_symmetrize_grid_equals_dense():
    gen = torch.Generator().manual_seed(3)
    weights = torch.rand(8, 5, 6, generator=gen, dtype=torch.float64)  # radius 1, not symmetric
    grid = gp.GridGraph(weights, 1)
    dense = grid.to_sparse_coo().to_dense()
    torch.testing.assert_close(gp.symmetrize(grid).to_sparse_coo().to_dense(), dense + dense.T)
    assert gp.remove_self_loops(grid) is grid
    with pytest.raises(ValueError, match="symmetric"):
        gp.label_propagation(grid, torch.rand(30, 2, dtype=torch.float64), solver="cg")


@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
def test_propagation_on_grid_equals_explicit_graph(solver):
    gen = torch.Generator().manual_seed(1)
    grid = gp.grid_graph(torch.rand(3, 9, 11, generator=gen, dtype=torch.float64), 2, 0.3)
    y = torch.rand(99, 5, generator=gen, dtype=torch.float64)
    kw = dict(solver=solver, tol=1e-6, max_iter=10)
    torch.testing.assert_close(
        gp.label_propagation(grid, y, **kw), gp.label_propagation(grid.to_graph(), y, **kw)
    )


def test_published_pixel_setting_matches_scipy_float64():
    """The LPOSS+ pixel stage on a small Lab image: float32 stencil CG vs float64
    scipy CG per column on the explicit matrix, at the published settings."""
    import scipy.sparse.linalg as spl

    gen = torch.Generator().manual_seed(2)
    image = (torch.rand(3, 30, 40, generator=gen) * 255).round() / 255
    lab = rgb_to_lab(image) / torch.tensor(LAB_SCALE).view(3, 1, 1)
    grid = gp.grid_graph(lab, 6, 0.01)
    y = torch.rand(1200, 46, generator=gen)
    z = gp.label_propagation(grid, y)
    w_hat = gp.sym_normalize(grid.to_graph().to(dtype=torch.float64)).to_dense().numpy()
    a = np.eye(1200) - 0.95 * w_hat
    ref = np.stack([spl.cg(a, y[:, c].double().numpy(), rtol=1e-6, maxiter=10)[0] for c in range(46)], 1)
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_denormal_degrees_stay_finite():
    # two very different colours: weights exp(-d / 0.01) underflow to denormals or 0
    image = torch.zeros(3, 6, 6)
    image[:, :, 3:] = 1.0
    image[:, 0, 0] = torch.tensor([0.0, 0.9, 0.0])
    lab = rgb_to_lab(image) / torch.tensor(LAB_SCALE).view(3, 1, 1)
    grid = gp.grid_graph(lab, 2, 0.01)
    normalized = gp.sym_normalize(grid)
    assert bool(torch.isfinite(normalized.scale).all())
    z = gp.label_propagation(grid, torch.rand(36, 3))
    assert bool(torch.isfinite(z).all())


def test_grid_bad_inputs():
    with pytest.raises(ValueError, match="signal"):
        gp.grid_graph(torch.rand(4, 4), 1)
    with pytest.raises(ValueError, match="signal contains NaN"):
        gp.grid_graph(torch.full((1, 3, 3), float("nan")), 1)
    with pytest.raises(ValueError, match="radius"):
        gp.grid_graph(torch.rand(1, 3, 3), 0)
    with pytest.raises(TypeError, match="radius"):
        gp.grid_graph(torch.rand(1, 3, 3), 1.0)
    with pytest.raises(TypeError, match="signal"):
        gp.grid_graph(torch.ones(1, 3, 3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="tau"):
        gp.grid_graph(torch.rand(1, 3, 3), 1, 0.0)
    with pytest.raises(TypeError, match="tau"):
        gp.grid_graph(torch.rand(1, 3, 3), 1, "0.01")
    with pytest.raises(TypeError, match="weight_fn must map .*weight tensors"):
        gp.grid_graph(torch.rand(1, 3, 3), 1, weight_fn=lambda a, b: 1.0)
    with pytest.raises(ValueError, match="weight_fn must return finite non-negative"):
        gp.grid_graph(torch.rand(1, 3, 3), 1, weight_fn=lambda a, b: -torch.ones(a.shape[1:]))
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        gp.grid_graph(torch.rand(1, 3, 3), 1, weight_fn=lambda a, b: torch.ones(2))
    with pytest.raises(TypeError, match="weight_fn must be a callable"):
        gp.grid_graph(torch.rand(1, 3, 3), 1, weight_fn=0.5)
    fn = gp.exp_distance_weight(0.5)
    for tau in (0.5, 0.01):  # the default value given explicitly is given too
        with pytest.raises(ValueError, match="one of tau and weight_fn, not both"):
            gp.grid_graph(torch.rand(1, 3, 3), 1, tau, weight_fn=fn)
    with pytest.raises(ValueError, match="one of tau and weight_fn, not both"), pytest.warns(DeprecationWarning):
        gp.grid_graph(torch.rand(1, 3, 3), 1, fn, weight_fn=fn)
    for new in ({"tau": 0.5}, {"weight_fn": fn}):  # weight= with either of the new names
        for old in (0.3, fn):
            with pytest.raises(ValueError, match="not two"), pytest.warns(DeprecationWarning):
                gp.grid_graph(torch.rand(1, 3, 3), 1, weight=old, **new)
    with pytest.raises(ValueError, match="weights must have"):
        gp.GridGraph(torch.rand(7, 3, 3), 1)
    grid = gp.grid_graph(torch.rand(1, 3, 3), 1)
    with pytest.raises(ValueError, match="z must have N=9"):
        grid.matmul(torch.rand(8, 2))
    with pytest.raises(ValueError, match="kernel"):
        grid.matmul(torch.rand(9, 2), kernel="cuda")
    with pytest.raises(TypeError, match="kernel"):
        grid.matmul(torch.rand(9, 2), kernel=1)
    with pytest.raises(TypeError, match="z must be a floating"):
        grid.matmul(torch.ones(9, 2, dtype=torch.long))


def test_grid_graph_weight_keyword_is_a_deprecated_name_of_tau():
    signal = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(4))
    expected = gp.grid_graph(signal, 2, 0.3).weights
    assert torch.equal(gp.grid_graph(signal, 2, tau=0.3).weights, expected)
    with pytest.warns(DeprecationWarning, match="tau"):
        old = gp.grid_graph(signal, 2, weight=0.3)
    assert torch.equal(old.weights, expected)
    assert not torch.equal(gp.grid_graph(signal, 2).weights, expected)  # the default tau 0.01 differs


def test_a_weight_function_as_third_argument_is_a_deprecated_weight_fn():
    signal = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(5))
    fn = gp.exp_distance_weight(0.3)
    expected = gp.grid_graph(signal, 2, weight_fn=fn).weights
    torch.testing.assert_close(expected, gp.grid_graph(signal, 2, 0.3).weights)  # the torch and numba paths
    for args, kwargs, words in [((fn,), {}, "with a weight function is deprecated"),
                                ((), {"weight": fn}, r"grid_graph\(weight=...\) is deprecated")]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert torch.equal(gp.grid_graph(signal, 2, *args, **kwargs).weights, expected)
        assert len(caught) == 1 and caught[0].category is DeprecationWarning
        assert re.search(words, str(caught[0].message))
        assert caught[0].filename == __file__  # it points at the caller's line


def test_fold_scale_and_its_deprecated_alias_materialize():
    grid = gp.sym_normalize(gp.grid_graph(torch.rand(2, 5, 6, dtype=torch.float64), 2, 0.3))
    folded = grid.fold_scale()
    assert folded.scale is None and isinstance(folded, gp.GridGraph)  # still a stencil
    torch.testing.assert_close(folded.to_sparse_coo().to_dense(), grid.to_sparse_coo().to_dense())
    dense = grid.to_sparse_coo().to_dense()
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(6), indexing="ij")
    p = ys.reshape(-1) * 6 + xs.reshape(-1)
    for o, (dy, dx) in enumerate(grid.offsets):  # the folded weights are W's entries, offset by offset
        inside = (ys + dy >= 0) & (ys + dy < 5) & (xs + dx >= 0) & (xs + dx < 6)
        q = (ys + dy).clamp(0, 4) * 6 + (xs + dx).clamp(0, 5)
        expected = torch.where(inside, dense[p, q.reshape(-1)].reshape(5, 6), 0.0)
        torch.testing.assert_close(folded.weights[o], expected)
    assert folded.fold_scale() is folded
    with pytest.warns(DeprecationWarning, match="fold_scale"):
        assert torch.equal(grid.materialize().weights, folded.weights)


@pytest.mark.parametrize("kernel", KERNELS)
def test_grid_matmul_out_and_operator_contract(kernel):
    gen = torch.Generator().manual_seed(6)
    for grid in (gp.grid_graph(torch.rand(2, 7, 8, generator=gen), 2, 0.3),  # mirrored
                 gp.GridGraph(torch.rand(24, 7, 8, generator=gen), 2)):  # not symmetric
        dense = grid.to_sparse_coo().to_dense().double()
        op = grid.operator(torch.float32, kernel=kernel)
        assert isinstance(op, gp.GraphOperator) and op.column_multiple >= 1
        for e in (3, op.column_multiple, 2 * op.column_multiple):  # padded and unpadded widths
            z = torch.rand(e, 56, generator=gen).T  # not contiguous
            before = z.clone()
            out = torch.full((56, e), float("nan"))
            assert grid.matmul(z, out=out, kernel=kernel) is out
            torch.testing.assert_close(out.double(), dense @ z.double(), rtol=1e-5, atol=1e-6)
            assert torch.equal(z, before)
            zc = z.contiguous()
            out = torch.empty(56, e)
            assert op(zc, out=out) is out
            torch.testing.assert_close(out.double(), dense @ zc.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_grid_propagation_operator_is_w_hat_transposed(normalize):
    gen = torch.Generator().manual_seed(7)
    for grid in (gp.grid_graph(torch.rand(2, 4, 5, generator=gen, dtype=torch.float64), 1, 0.3),
                 gp.GridGraph(torch.rand(8, 4, 5, generator=gen, dtype=torch.float64), 1)):
        wt = grid.to_sparse_coo().to_dense().T  # rows = receiving pixels
        if normalize:
            s = wt.sum(1).where(wt.sum(1) > 0, torch.ones(())).rsqrt()  # in-degrees, zero counted as 1
            wt = s[:, None] * wt * s[None, :]
        p = grid.propagation_operator(torch.float64, normalize=normalize)
        torch.testing.assert_close(p(torch.eye(20, dtype=torch.float64)), wt, rtol=1e-12, atol=1e-14)


def test_grid_symmetry_check_within_rounding_is_cached_and_sees_edits():
    grid = gp.grid_graph(torch.rand(2, 5, 6, dtype=torch.float64), 1, 0.3)
    weights = grid.weights.clone()  # a new tensor: not known mirrored
    weights[3, 2, 2] *= 1 + 1e-15  # within rounding of its mirror, so not exactly mirrored
    near = gp.GridGraph(weights, 1)
    assert not near.is_mirrored and near.is_symmetric()
    weights[3, 2, 2] += 0.5  # in place: the cached answer is not served
    assert not near.is_symmetric()


def test_rgb_to_lab_reference_values():
    colours = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.5], [1.0, 0.0, 0.0, 1.0, 0.5], [1.0, 0.0, 1.0, 0.0, 0.5]])
    lab = rgb_to_lab(colours.view(3, 1, 5)).view(3, 5).T
    expected = torch.tensor(
        [
            [100.0, 0.0, 0.0],  # white
            [0.0, 0.0, 0.0],  # black
            [32.30, 79.19, -107.86],  # blue
            [97.14, -21.55, 94.48],  # yellow
            [53.39, 0.0, 0.0],  # mid grey
        ]
    )
    torch.testing.assert_close(lab, expected, atol=0.05, rtol=0)
