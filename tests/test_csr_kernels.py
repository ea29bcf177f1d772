"""The numba CSR product (graphprop._csr_kernels) against dense matrix products:
plain and fused with the CG's shift and dot, several column counts and dtypes, rows
with no entry, matrices shorter than the prefetch distance, and the operator cached
on a Graph seeing in-place edits."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphprop as gp

ck = pytest.importorskip("graphprop._csr_kernels")


def random_csr(seed: int, n: int, density: float, dtype=np.float64):
    """(indptr, indices, values, dense) of a random (n, n) matrix in canonical CSR."""
    rng = np.random.default_rng(seed)
    dense = rng.random((n, n)) * (rng.random((n, n)) < density)
    rows, cols = np.nonzero(dense)
    indptr, indices, values = ck.canonical_csr(rows.astype(np.int64), cols.astype(np.int64),
                                               dense[rows, cols].astype(dtype), n)
    return indptr, indices, values, dense


# widths of the plain kernel, and multiples of 16 for the register-blocked one (blocks of up to
# three vectors: 64 and 80 take two passes over each row)
WIDTHS = st.integers(1, 19) | st.sampled_from([16, 32, 48, 64, 80])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 70), st.floats(0.0, 0.6), WIDTHS,
       st.sampled_from([np.float32, np.float64]))
def test_product_equals_the_dense_product(seed, n, density, columns, dtype):
    indptr, indices, values, dense = random_csr(seed, n, density, dtype)
    z = np.random.default_rng(seed + 1).standard_normal((n, columns)).astype(dtype)
    out = np.full_like(z, np.nan)
    ck.spmm(indptr, indices, values, z, out)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, dense.astype(dtype).astype(np.float64) @ z.astype(np.float64),
                               rtol=rtol, atol=rtol * max(1.0, np.abs(z).max()) * n)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 70), st.floats(0.0, 0.6), WIDTHS,
       st.sampled_from([np.float32, np.float64]), st.floats(0.01, 0.99))
def test_fused_step_equals_shift_and_dot(seed, n, density, columns, dtype, alpha):
    indptr, indices, values, dense = random_csr(seed, n, density, dtype)
    p = np.random.default_rng(seed + 1).standard_normal((n, columns)).astype(dtype)
    q = np.full_like(p, np.nan)
    dots = ck.shifted_spmm_dot(indptr, indices, values, alpha, p, q)
    p64 = p.astype(np.float64)
    expected_q = p64 - alpha * (dense.astype(dtype).astype(np.float64) @ p64)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(q, expected_q, rtol=rtol, atol=rtol * n)
    assert dots.shape == (columns,) and dots.dtype == dtype
    np.testing.assert_allclose(dots, (p64 * expected_q).sum(0), rtol=rtol * 10, atol=rtol * n * n)


@pytest.mark.parametrize("n, columns", [(3000, 10), (120_000, 10), (3000, 48), (3000, 64)])
def test_many_rows_and_tasks(n, columns):
    """More rows than one task (256) and entries than the prefetch distance, empty rows
    included: a random matrix plus a band, against scipy. 10 columns: the plain kernel,
    z of 120 kB, and past _PREFETCH_MIN_BYTES (prefetched); 48 and 64: the blocked one
    (always prefetched, up to the last entry)."""
    import scipy.sparse as sp

    assert (n * columns * 4 >= ck._PREFETCH_MIN_BYTES) == (n > 100_000)
    rng = np.random.default_rng(0)
    r, c = rng.integers(0, n, (2, 12 * n))
    m = sp.csr_matrix((rng.random(12 * n, dtype=np.float32), (r, c)), shape=(n, n))
    keep = np.ones(n, dtype=np.float32)
    keep[100:400] = 0  # empty rows, across a task boundary
    m = sp.csr_matrix(sp.diags(keep) @ (m + sp.eye(n, k=7, dtype=np.float32)))
    m.eliminate_zeros()
    m.sort_indices()
    z = np.random.default_rng(0).random((n, columns), dtype=np.float32)
    out = np.empty_like(z)
    ck.spmm(m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data, z, out)
    np.testing.assert_allclose(out, m @ z, rtol=1e-5, atol=1e-6)
    q = np.empty_like(z)
    dots = ck.shifted_spmm_dot(m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data, 0.9, z, q)
    np.testing.assert_allclose(q, z - 0.9 * (m @ z), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dots, (z.astype(np.float64) * (z - 0.9 * (m @ z))).sum(0), rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operator_on_a_graph_equals_the_dense_normalised_product(dtype):
    graph = gp.symmetrize(gp.Graph(torch.randint(0, 300, (2, 2000), generator=torch.Generator().manual_seed(0)),
                                   torch.rand(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
                                   300))
    op = ck.CsrOperator(*graph._receiver_csr(), normalize=True, dtype=dtype)
    w = graph.to_dense()
    w.fill_diagonal_(0)
    d = w.sum(0)
    dinv = torch.where(d > 0, d.rsqrt(), 0)
    p_hat = (dinv[:, None] * w * dinv[None, :]).T  # P = W_hat^T: rows receive
    z = torch.rand(300, 7, dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    torch.testing.assert_close(op(z).double(), p_hat @ z.double(), **tol)
    strided = torch.rand(7, 300, dtype=dtype).T  # not contiguous: the plain path
    q = torch.empty(300, 7, dtype=dtype)
    dots = op.shifted_dot(strided, 0.8, q)
    expected = strided.double() - 0.8 * (p_hat @ strided.double())
    torch.testing.assert_close(q.double(), expected, **tol)
    torch.testing.assert_close(dots.double(), (strided.double() * expected).sum(0), rtol=1e-4, atol=1e-4)


def test_cached_operator_sees_in_place_edits():
    """The operator is cached on the Graph per (normalize, dtype); editing the weights in
    place gives a new one (normalize=False: the raw weights are applied)."""
    graph = gp.symmetrize(gp.Graph(torch.randint(0, 50, (2, 300), generator=torch.Generator().manual_seed(2)),
                                   torch.rand(300, dtype=torch.float64) * 0.01, 50))
    y = torch.rand(50, 3, dtype=torch.float64)
    kw = {"alpha": 0.5, "solver": "cg", "tol": 1e-12, "max_iter": 200, "normalize": False}
    first = gp.label_propagation(graph, y, **kw)
    assert gp.label_propagation(graph, y, **kw).equal(first)
    graph.edge_weight.mul_(2)  # still symmetric
    second = gp.label_propagation(graph, y, **kw)
    w = graph.to_dense().numpy()
    np.testing.assert_allclose(second.numpy(), np.linalg.solve(np.eye(50) - 0.5 * w.T, y.numpy()), rtol=1e-9)
    assert not np.allclose(second.numpy(), first.numpy())


@pytest.mark.parametrize("dtype, widths", [
    # whole vectors stay; else a multiple of 16 within 60% more; else whole vectors within an eighth
    (torch.float64, {1: 1, 8: 8, 10: 16, 46: 48, 47: 48, 60: 64, 3: 3, 40: 40, 24: 24, 50: 64, 4: 4, 9: 9}),
    (torch.float32, {10: 16, 16: 16, 46: 48, 120: 128, 100: 112, 20: 32, 8: 8, 4: 4, 32: 32, 6: 6}),
])
def test_padded_width_rounds_up_to_whole_vectors_only_when_cheap(dtype, widths):
    indptr, indices, values, _ = random_csr(5, 20, 0.3)
    op = ck.CsrOperator(indptr, indices, values, normalize=False, dtype=dtype)
    assert {e: op.padded_width(e) for e in widths} == widths


def test_cg_runs_46_columns_48_wide_with_the_same_answer(monkeypatch):
    """The CG allocates its state ``padded_width(46) = 48`` columns wide (the product is
    called on 48-column blocks), and the answer equals a dense solve and the unpadded CG."""
    graph = gp.symmetrize(gp.Graph(torch.randint(0, 200, (2, 3000), generator=torch.Generator().manual_seed(3)),
                                   torch.rand(3000, generator=torch.Generator().manual_seed(4),
                                              dtype=torch.float64) * 0.02, 200))  # I - 0.9 W positive definite
    y = torch.rand(200, 46, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kw = {"alpha": 0.9, "solver": "cg", "tol": 1e-13, "max_iter": 300, "normalize": False}
    widths = []
    shifted_dot = ck.CsrOperator.shifted_dot

    def spy(self, p, alpha, q):
        widths.append(p.shape[1])
        return shifted_dot(self, p, alpha, q)

    monkeypatch.setattr(ck.CsrOperator, "shifted_dot", spy)
    padded = gp.label_propagation(graph, y, **kw)
    assert widths and set(widths) == {48} and padded.shape == (200, 46)
    w = graph.to_dense().numpy()
    np.testing.assert_allclose(padded.numpy(), np.linalg.solve(np.eye(200) - 0.9 * w.T, y.numpy()), rtol=1e-9)
    monkeypatch.setattr(ck.CsrOperator, "padded_width", lambda self, e: e)
    widths.clear()
    plain = gp.label_propagation(graph, y, **kw)
    assert set(widths) == {46}
    np.testing.assert_allclose(padded.numpy(), plain.numpy(), rtol=1e-12, atol=1e-14)
