import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

import graphprop
import graphprop._knn as knn_module

METRICS = ("cosine", "ip", "l2")
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- reference
def brute_scores(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """(M, N) scores of every query against every point, in float64 numpy: cosine
    similarities, inner products or Euclidean distances."""
    x = np.asarray(x, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        return qn @ xn.T
    if metric == "ip":
        return q @ x.T
    return cdist(q, x, metric="euclidean")


def check_against_brute(values, indices, x, q, k, metric, *, value_tol, rank_tol):
    """Ties allowed: every returned index's true score equals the returned value, the
    indices are distinct and in range, the values are best first, and the sorted values
    equal the brute-force top-k.

    ``rank_tol`` is the tolerance of the ranking comparison, done on the score the
    backend ranks by (the squared distance for l2), ``value_tol`` that of each value
    against its index's true score."""
    S = brute_scores(x, q, metric)
    m, n = S.shape
    assert values.shape == (m, k) and indices.shape == (m, k)
    assert indices.dtype == torch.int64
    assert values.dtype == torch.as_tensor(x).dtype
    v = values.double().numpy()
    idx = indices.numpy()
    assert ((idx >= 0) & (idx < n)).all()
    for row in idx:
        assert len(set(row.tolist())) == k, f"duplicate indices in a row: {row}"
    true = np.take_along_axis(S, idx, axis=1)
    np.testing.assert_allclose(v, true, rtol=value_tol, atol=value_tol)
    largest = metric != "l2"
    if largest:
        rank, brute_rank = v, S
    else:  # the ranking is done on squared distances
        rank, brute_rank = v**2, S**2
    # best first (up to the rounding of the ranking scores)
    if largest:
        assert (np.diff(rank, axis=1) <= rank_tol * (1 + np.abs(rank[:, 1:]))).all()
    else:
        assert (np.diff(rank, axis=1) >= -rank_tol * (1 + np.abs(rank[:, 1:]))).all()
    brute_sorted = np.sort(brute_rank, axis=1)
    brute_top = brute_sorted[:, ::-1][:, :k] if largest else brute_sorted[:, :k]
    np.testing.assert_allclose(
        np.sort(rank, axis=1), np.sort(brute_top, axis=1), rtol=rank_tol, atol=rank_tol
    )


# ---------------------------------------------------------------------- strategies
GRID = st.integers(-6, 6).map(lambda v: v / 4.0)  # exact arithmetic in float64: exact ties
FLOATS = st.floats(-10, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def knn_cases(draw, elements):
    n = draw(st.integers(1, 25))
    d = draw(st.integers(1, 5))
    k = draw(st.integers(1, n))
    x = draw(arrays(np.float64, (n, d), elements=elements))
    if draw(st.booleans()):
        m = draw(st.integers(1, 15))
        q = draw(arrays(np.float64, (m, d), elements=elements))
    else:
        q = None
    return x, q, k


def _nonzero_rows(a: np.ndarray | None) -> np.ndarray | None:
    """Cosine is undefined for a zero row (and F.normalize leaves rows of norm < 1e-12
    unnormalised, see test_cosine_tiny_norm_rows): give such rows a unit entry."""
    if a is None:
        return None
    a = a.copy()
    small = np.linalg.norm(a, axis=1) < 1e-3
    a[small, 0] = 1.0
    return a


def _run(x, q, k, metric, backend="torch"):
    xt = torch.from_numpy(x)
    qt = None if q is None else torch.from_numpy(q)
    return graphprop.knn(xt, k, queries=qt, metric=metric, backend=backend)


# ----------------------------------------------------------------- brute-force tests
@pytest.mark.parametrize("metric", METRICS)
@SETTINGS
@given(case=knn_cases(GRID))
def test_torch_matches_brute_force_exact_ties(metric, case):
    """Small multiples of 1/4: every score is exact, so ties are exact ties."""
    x, q, k = case
    if metric == "cosine":
        x, q = _nonzero_rows(x), _nonzero_rows(q)
    values, indices = _run(x, q, k, metric)
    check_against_brute(values, indices, x, x if q is None else q, k, metric,
                        value_tol=1e-12, rank_tol=1e-12)


@pytest.mark.parametrize("metric", METRICS)
@SETTINGS
@given(case=knn_cases(FLOATS))
def test_torch_matches_brute_force_float64(metric, case):
    x, q, k = case
    if metric == "cosine":
        x, q = _nonzero_rows(x), _nonzero_rows(q)
    values, indices = _run(x, q, k, metric)
    # l2 ranks by ||q||^2 - 2 q.x + ||x||^2 (absolute error ~1e-13 for |coords| <= 10);
    # its values are recomputed from differences, hence the tight value_tol.
    check_against_brute(values, indices, x, x if q is None else q, k, metric,
                        value_tol=1e-10, rank_tol=1e-9)


def test_l2_matches_sklearn_nearest_neighbors():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(80, 5, generator=g, dtype=torch.float64)
    q = torch.randn(23, 5, generator=g, dtype=torch.float64)
    values, indices = graphprop.knn(x, 7, queries=q, metric="l2", backend="torch")
    dist, ind = NearestNeighbors(n_neighbors=7).fit(x.numpy()).kneighbors(q.numpy())
    np.testing.assert_allclose(values.numpy(), dist, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(indices.numpy(), ind)  # continuous data: no ties


@pytest.mark.parametrize("metric", METRICS)
def test_float32(metric):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    q = torch.randn(17, 6, generator=g)
    values, indices = graphprop.knn(x, 5, queries=q, metric=metric, backend="torch")
    assert values.dtype == torch.float32
    check_against_brute(values, indices, x.numpy(), q.numpy(), 5, metric,
                        value_tol=1e-5, rank_tol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_queries_different_from_x(metric):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    q = torch.randn(11, 4, generator=g, dtype=torch.float64)
    values, indices = graphprop.knn(x, 6, queries=q, metric=metric)
    assert values.shape == indices.shape == (11, 6)
    check_against_brute(values, indices, x.numpy(), q.numpy(), 6, metric,
                        value_tol=1e-12, rank_tol=1e-12)
    # and with M > N
    values, indices = graphprop.knn(q, 3, queries=x, metric=metric)
    assert values.shape == (30, 3)
    check_against_brute(values, indices, q.numpy(), x.numpy(), 3, metric,
                        value_tol=1e-12, rank_tol=1e-12)


@pytest.mark.parametrize("metric", METRICS)
def test_keops_matches_brute_force(metric):
    try:
        import pykeops.torch  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the installation
        pytest.skip(f"pykeops unavailable: {exc}")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(150, 3, generator=g, dtype=torch.float64)
    q = torch.randn(40, 3, generator=g, dtype=torch.float64)
    # Compilation happens once per formula/dimension/dtype (cosine and ip share one).
    values, indices = graphprop.knn(x, 8, queries=q, metric=metric, backend="keops")
    check_against_brute(values, indices, x.numpy(), q.numpy(), 8, metric,
                        value_tol=1e-10, rank_tol=1e-10)
    values, indices = graphprop.knn(x, 8, metric=metric, backend="keops")
    check_against_brute(values, indices, x.numpy(), x.numpy(), 8, metric,
                        value_tol=1e-10, rank_tol=1e-10)
    if metric != "ip":
        np.testing.assert_array_equal(indices[:, 0].numpy(), np.arange(150))


# -------------------------------------------------------------------- self neighbour
def _primitive(t):
    """The direction of an integer vector as a hashable: t / gcd(t)."""
    g = 0
    for v in t:
        g = math.gcd(g, abs(v))
    return tuple(v // g for v in t)


@st.composite
def distinct_points(draw, distinct_directions):
    d = draw(st.integers(1, 4))
    row = st.tuples(*[st.integers(-6, 6)] * d)
    if distinct_directions:
        row = row.filter(any)
    if distinct_directions:
        rows = draw(st.lists(row, min_size=1, max_size=20, unique_by=_primitive))
    else:
        rows = draw(st.lists(row, min_size=1, max_size=20, unique=True))
    scale = draw(st.sampled_from([0.25, 1.0, 3.0]))
    x = np.array(rows, dtype=np.float64) * scale
    perturb = draw(arrays(np.float64, x.shape, elements=st.floats(-1e-3, 1e-3)))
    return x + perturb * scale, draw(st.integers(1, len(rows)))


@SETTINGS
@given(case=distinct_points(distinct_directions=False))
def test_point_is_its_own_nearest_neighbour_l2(case):
    x, k = case
    values, indices = graphprop.knn(torch.from_numpy(x), k, metric="l2", backend="torch")
    np.testing.assert_array_equal(indices[:, 0].numpy(), np.arange(len(x)))
    assert (values[:, 0] == 0).all()
    assert (values[:, 1:] > 0).all()


@SETTINGS
@given(case=distinct_points(distinct_directions=True))
def test_point_is_its_own_nearest_neighbour_cosine(case):
    x, k = case
    S = brute_scores(x, x, "cosine")
    off = S[~np.eye(len(x), dtype=bool)]
    assume(off.size == 0 or off.max() < 1 - 1e-7)  # the perturbation keeps directions apart
    values, indices = graphprop.knn(torch.from_numpy(x), k, metric="cosine", backend="torch")
    np.testing.assert_array_equal(indices[:, 0].numpy(), np.arange(len(x)))
    np.testing.assert_allclose(values[:, 0].numpy(), 1.0, atol=1e-12)


def test_cosine_is_scale_invariant_per_row():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    scales = torch.rand(20, 1, generator=g, dtype=torch.float64) * 100 + 1e-3
    v1, i1 = graphprop.knn(x, 4, metric="cosine")
    v2, i2 = graphprop.knn(x * scales, 4, metric="cosine")
    np.testing.assert_allclose(v1.numpy(), v2.numpy(), atol=1e-12)
    np.testing.assert_array_equal(i1.numpy(), i2.numpy())


def test_cosine_tiny_and_huge_norm_rows():
    # rows are scaled by their largest entry before normalising: tiny (even denormal)
    # and huge rows still get unit length
    x = torch.tensor([[1e-13, 0.0], [1.0, 1.0], [2.0, 0.1], [1e-310, 3e-310], [1e300, 2e299]], dtype=torch.float64)
    values, indices = graphprop.knn(x, 3, metric="cosine", backend="torch")
    unit = x / x.abs().amax(1, keepdim=True)
    check_against_brute(values, indices, unit.numpy(), unit.numpy(), 3, "cosine",
                        value_tol=1e-12, rank_tol=1e-12)
    assert indices[:, 0].tolist() == [0, 1, 2, 3, 4]  # each point is its own best match


# ----------------------------------------------------------------------- blockwise
@pytest.mark.parametrize("metric", METRICS)
def test_blockwise_equals_unblocked(metric, monkeypatch):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(37, 5, generator=g, dtype=torch.float64)
    q = torch.randn(23, 5, generator=g, dtype=torch.float64)
    for queries in (None, q):
        v_ref, i_ref = graphprop.knn(x, 6, queries=queries, metric=metric, backend="torch")
        with monkeypatch.context() as mp:
            mp.setattr(knn_module, "_BLOCK_ELEMENTS", 7)
            v_blk, i_blk = graphprop.knn(x, 6, queries=queries, metric=metric, backend="torch")
        np.testing.assert_array_equal(i_blk.numpy(), i_ref.numpy())
        np.testing.assert_allclose(v_blk.numpy(), v_ref.numpy(), rtol=1e-12, atol=1e-12)
        qq = x if queries is None else queries
        check_against_brute(v_blk, i_blk, x.numpy(), qq.numpy(), 6, metric,
                            value_tol=1e-12, rank_tol=1e-12)


@pytest.mark.parametrize("metric", METRICS)
@SETTINGS
@given(case=knn_cases(GRID), block=st.integers(1, 40))
def test_blockwise_matches_brute_force(metric, case, block):
    x, q, k = case
    if metric == "cosine":
        x, q = _nonzero_rows(x), _nonzero_rows(q)
    old = knn_module._BLOCK_ELEMENTS
    knn_module._BLOCK_ELEMENTS = block
    try:
        values, indices = _run(x, q, k, metric)
    finally:
        knn_module._BLOCK_ELEMENTS = old
    check_against_brute(values, indices, x, x if q is None else q, k, metric,
                        value_tol=1e-12, rank_tol=1e-12)


# --------------------------------------------------------------------- k clamping
@pytest.mark.parametrize("metric", METRICS)
def test_k_larger_than_n_clamps_with_warning(metric):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    with pytest.warns(UserWarning, match="k=9"):
        values, indices = graphprop.knn(x, 9, metric=metric)
    assert values.shape == indices.shape == (5, 5)
    for row in indices.numpy():
        assert sorted(row.tolist()) == list(range(5))
    check_against_brute(values, indices, x.numpy(), x.numpy(), 5, metric,
                        value_tol=1e-12, rank_tol=1e-12)


def test_k_equal_n_does_not_warn():
    x = torch.randn(5, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values, _ = graphprop.knn(x, 5)
    assert values.shape == (5, 5)


# -------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs_rejected(bad):
    x = torch.randn(6, 3, dtype=torch.float64)
    x_bad = x.clone()
    x_bad[2, 1] = bad
    with pytest.raises(ValueError, match=r"^x "):
        graphprop.knn(x_bad, 2)
    with pytest.raises(ValueError, match=r"^queries "):
        graphprop.knn(x, 2, queries=x_bad)


def test_wrong_dims_rejected():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"^x "):
        graphprop.knn(torch.randn(6), 2)
    with pytest.raises(ValueError, match=r"^x "):
        graphprop.knn(torch.randn(2, 6, 3), 2)
    with pytest.raises(ValueError, match=r"^queries "):
        graphprop.knn(x, 2, queries=torch.randn(3))
    with pytest.raises(ValueError, match=r"^queries "):
        graphprop.knn(x, 2, queries=torch.randn(1, 3, 3))


def test_mismatched_feature_dimension_rejected():
    with pytest.raises(ValueError, match="queries"):
        graphprop.knn(torch.randn(6, 3), 2, queries=torch.randn(4, 5))


def test_empty_x_rejected():
    with pytest.raises(ValueError, match=r"^x "):
        graphprop.knn(torch.randn(0, 3), 1)


def test_bad_metric_and_backend_rejected():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="metric"):
        graphprop.knn(x, 2, metric="euclidean")
    with pytest.raises(ValueError, match="backend"):
        graphprop.knn(x, 2, backend="cuda")
    with pytest.raises(ValueError, match="metric"):
        graphprop.knn_graph(x, 2, metric="cos")


@pytest.mark.parametrize(("k", "error"), [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_k_rejected(k, error):
    with pytest.raises(error, match="k"):
        graphprop.knn(torch.randn(6, 3), k)


# ---------------------------------------------------------------- backend choice
@pytest.mark.parametrize(
    "n, m, d, k", [(10, 10, 3, 2), (10**6, 10**6, 3, 8), (2940, 2940, 768, 400), (10**5, 10**5, 16, 64)]
)
def test_select_knn_backend_cpu(n, m, d, k):
    assert graphprop.select_knn_backend(n, m, d, k, "cpu") == "torch"
    assert graphprop.select_knn_backend(n, m, d, k, torch.device("cpu")) == "torch"


# ---------------------------------------------------------------------- knn_graph
@st.composite
def random_points(draw):
    n = draw(st.integers(1, 20))
    d = draw(st.integers(2, 4))  # d >= 2: no exact cosine ties (in 1-D every direction is +-1)
    k = draw(st.integers(1, n))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), k  # continuous: no ties


def _brute_topk_sets(S: np.ndarray, k: int, largest: bool) -> list[np.ndarray]:
    order = np.argsort(-S if largest else S, axis=1, kind="stable")
    return [order[i, :k] for i in range(S.shape[0])]


@SETTINGS
@given(case=random_points())
def test_knn_graph_cosine_default_weights(case):
    x, k = case
    graph = graphprop.knn_graph(x, k)
    n = len(x)
    assert isinstance(graph, graphprop.Graph)
    assert graph.num_nodes == n and graph.num_edges == n * k
    assert graph.edge_weight.dtype == torch.float64
    np.testing.assert_array_equal(graph.edge_index[0].numpy(), np.repeat(np.arange(n), k))
    S = brute_scores(x.numpy(), x.numpy(), "cosine")
    expected = np.zeros((n, n))
    for i, nbrs in enumerate(_brute_topk_sets(S, k, largest=True)):
        expected[i, nbrs] = np.maximum(S[i, nbrs], 0.0)
        # the edges of row i are exactly its k nearest neighbours
        assert set(graph.edge_index[1, i * k : (i + 1) * k].tolist()) == set(nbrs.tolist())
    np.testing.assert_allclose(graph.to_dense().numpy(), expected, atol=1e-12)
    assert (graph.edge_weight >= 0).all()


@SETTINGS
@given(case=random_points())
def test_knn_graph_l2_default_weights_are_one(case):
    x, k = case
    graph = graphprop.knn_graph(x, k, metric="l2")
    n = len(x)
    assert graph.num_edges == n * k
    assert (graph.edge_weight == 1).all()
    S = brute_scores(x.numpy(), x.numpy(), "l2")
    expected = np.zeros((n, n))
    for i, nbrs in enumerate(_brute_topk_sets(S, k, largest=False)):
        expected[i, nbrs] = 1.0
    np.testing.assert_array_equal(graph.to_dense().numpy(), expected)


@pytest.mark.parametrize("metric", METRICS)
def test_knn_graph_custom_weight(metric):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(15, 3, generator=g, dtype=torch.float64)
    k = 4
    seen = {}

    def weight(values, edge_index):
        seen["values"], seen["edge_index"] = values.clone(), edge_index.clone()
        return torch.exp(-values) + edge_index[1].to(values.dtype)

    graph = graphprop.knn_graph(x, k, metric=metric, weight=weight)
    v, i = graphprop.knn(x, k, metric=metric)
    np.testing.assert_array_equal(seen["values"].numpy(), v.reshape(-1).numpy())
    np.testing.assert_array_equal(seen["edge_index"].numpy(), graph.edge_index.numpy())
    S = brute_scores(x.numpy(), x.numpy(), metric)
    expected = np.zeros((15, 15))
    for row, nbrs in enumerate(_brute_topk_sets(S, k, largest=metric != "l2")):
        expected[row, nbrs] = np.exp(-S[row, nbrs]) + nbrs
    np.testing.assert_allclose(graph.to_dense().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_knn_graph_bad_custom_weight_rejected():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="weight"):
        graphprop.knn_graph(x, 2, weight=lambda values, edge_index: values[:, None])


# ------------------------------------------------------------------ symmetric kNN graphs
def _dense_symmetric(x: np.ndarray, k: int, metric: str, weight=None):
    """Independent W + W^T in float64 numpy from the brute-force top-k: (weights, structure),
    structure True where an edge exists in either direction (zero weights included)."""
    S = brute_scores(x, x, metric)
    n = len(x)
    w = np.zeros((n, n))
    mask = np.zeros((n, n), dtype=bool)
    for i, nbrs in enumerate(_brute_topk_sets(S, k, largest=metric != "l2")):
        w[i, nbrs] = weight(S[i, nbrs], i, nbrs) if weight else (1.0 if metric == "l2" else np.maximum(S[i, nbrs], 0))
        mask[i, nbrs] = True
    return w + w.T, mask | mask.T


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("metric", METRICS)
@SETTINGS
@given(case=random_points())
def test_symmetric_knn_graph_matches_dense(case, metric, compiled):
    """``symmetric=True`` is W + W^T of the brute-force kNN: every edge of either direction
    (sorted, no duplicates), both weights added; the numba kernel and the general path."""
    x, k = case
    if metric == "cosine":
        x = torch.from_numpy(_nonzero_rows(x.numpy()))
    with mock.patch.object(knn_module, "_compiled_symmetrize", lambda w: compiled):
        graph = graphprop.knn_graph(x, k, metric=metric, symmetric=True)
    expected, mask = _dense_symmetric(x.numpy(), k, metric)
    rows, cols = np.nonzero(mask)  # row-major: sorted by (source, target)
    np.testing.assert_array_equal(graph.edge_index.numpy(), np.stack([rows, cols]))
    np.testing.assert_allclose(graph.edge_weight.numpy(), expected[rows, cols], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_symmetric_knn_graph_equals_symmetrize_exactly(dtype):
    """The numba kernel gives bit for bit ``symmetrize(knn_graph(...))`` (the same sums
    ``w_ij + w_ji``), explicit zero weights kept as edges, at k = N too."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 5, generator=g, dtype=dtype)
    for k in (1, 7, 60):
        def weight(values, edge_index):  # negative similarities give explicit zeros
            return values.clamp_min(0) ** 1.7 * torch.exp(-0.1 * (edge_index[0] - edge_index[1]).abs().to(dtype))

        fast = graphprop.knn_graph(x, k, metric="ip", weight=weight, symmetric=True)
        slow = graphprop.symmetrize(graphprop.knn_graph(x, k, metric="ip", weight=weight))
        assert knn_module._compiled_symmetrize(fast.edge_weight)
        assert torch.equal(fast.edge_index, slow.edge_index)
        assert torch.equal(fast.edge_weight, slow.edge_weight)
        assert fast.edge_weight.dtype == dtype
        if k > 7:
            assert bool((fast.edge_weight == 0).any())  # zeros stayed edges


def test_symmetric_knn_graph_custom_weight_sees_each_directed_edge_once():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    seen = {}

    def weight(values, edge_index):
        seen["edge_index"] = edge_index
        return torch.exp(values) * (1 + edge_index[1].to(values.dtype))

    graph = graphprop.knn_graph(x, 6, metric="l2", weight=weight, symmetric=True)
    assert seen["edge_index"].shape == (2, 30 * 6)
    expected, mask = _dense_symmetric(x.numpy(), 6, "l2", weight=lambda s, i, nbrs: np.exp(s) * (1 + nbrs))
    np.testing.assert_allclose(graph.to_dense().numpy(), expected, rtol=1e-12)
    assert graph.num_edges == mask.sum()


@pytest.mark.parametrize("ties", [False, True])
def test_unordered_search_finds_the_same_neighbours(ties):
    """knn_graph(symmetric=True) skips the sort of each row: the same neighbours and values
    as knn, each row as a set (with exact ties too: small integer points)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randint(-2, 3, (200, 3), generator=g).float() if ties else torch.randn(200, 16, generator=g)
    v, i = graphprop.knn(x, 30, metric="ip")
    vu, iu = knn_module._search(x, 30, None, "ip", "torch", ordered=False)
    order = iu.argsort(dim=1)
    ref = i.argsort(dim=1)
    assert torch.equal(iu.gather(1, order), i.gather(1, ref))
    assert torch.equal(vu.gather(1, order), v.gather(1, ref))


def test_numpy_blas_product_equals_torch():
    """The CPU inner products go through numpy's BLAS (faster on AMD CPUs): equal to torch's
    to float rounding, and torch's own product is kept where a gradient is needed."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 64, generator=g)
    q = torch.randn(40, 64, generator=g)
    assert knn_module._use_numpy_blas(x, q)
    torch.testing.assert_close(knn_module._numpy_product(q, x), knn_module._torch_product(q, x), rtol=1e-5, atol=1e-5)
    assert not knn_module._use_numpy_blas(x.requires_grad_(), q)
    values, _ = graphprop.knn(x, 5, queries=q, metric="ip")
    assert values.requires_grad


# ------------------------------------------- the compiled partial selection (select_topk)
def _expected_selection(s: np.ndarray, k: int) -> np.ndarray:
    """Each row's k largest, of equal values those of lowest index, as increasing indices:
    a stable sort by decreasing value (np.argsort of -s treats -0.0 and +0.0 as equal)."""
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.sort(order, axis=1)


@st.composite
def score_matrices(draw):
    m = draw(st.integers(1, 12))
    n = draw(st.integers(1, 700))
    k = draw(st.integers(1, n))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    kind = draw(st.sampled_from(["continuous", "ties", "signed zeros", "wide"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    if kind == "continuous":
        s = rng.standard_normal((m, n))
    elif kind == "ties":  # many exact ties at the k-th place
        s = rng.integers(-3, 4, (m, n)).astype(float)
    elif kind == "signed zeros":
        s = rng.choice([-0.0, 0.0, 1.0, -1.0], (m, n))
    else:  # magnitudes over the whole float range: the integer keys' bisection without overflow
        s = rng.standard_normal((m, n)) * 10.0 ** rng.integers(-30, 30, (m, n))
    return s.astype(dtype), k


@SETTINGS
@given(case=score_matrices())
def test_select_topk_is_the_stable_top_k(case):
    """The k largest of each row, the ties at the k-th place broken by lowest index, indices
    increasing and values those of the scores; against a stable sort, at sizes around the
    sample (256) and k from 1 to N, float32 and float64."""
    from graphprop._knn_kernels import select_topk

    s, k = case
    values, indices = select_topk(s, k)
    assert values.dtype == s.dtype and indices.dtype == np.int64 and indices.shape == (s.shape[0], k)
    np.testing.assert_array_equal(indices, _expected_selection(s, k))
    np.testing.assert_array_equal(values, np.take_along_axis(s, indices, axis=1))


def test_select_topk_when_the_sample_misleads():
    """Rows whose sampled entries (every step-th) are the largest: fewer than k entries reach
    the sample's pivot, so every entry is kept and the result is still exact. Duplicate
    rows (duplicate points) give the same selection."""
    from graphprop import _knn_kernels

    rng = np.random.default_rng(4)
    n, k = 1000, 100
    step = n // _knn_kernels._SAMPLE
    s = rng.random((6, n)).astype(np.float32) * 0.5
    s[:, ::step] += 1.0
    s[3] = s[2]
    values, indices = _knn_kernels.select_topk(s, k)
    np.testing.assert_array_equal(indices, _expected_selection(s, k))
    np.testing.assert_array_equal(indices[3], indices[2])
    tv, _ = torch.from_numpy(s).topk(k, dim=1)
    np.testing.assert_array_equal(np.sort(values, axis=1), np.sort(tv.numpy(), axis=1))


def test_compiled_selection_search_equals_torch_topk():
    """_search(selection=True): the neighbours and values of knn, each row as a set, with
    duplicate points; knn itself (ordered) is unchanged."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(300, 8, generator=g)
    x[150:] = x[:150]  # every point twice: exact ties everywhere
    for k in (1, 2, 37, 300):
        v, i = graphprop.knn(x, k, metric="ip")
        vs, is_ = knn_module._search(x, k, None, "ip", "torch", ordered=False, selection=True)
        assert bool((is_[:, 1:] > is_[:, :-1]).all())
        np.testing.assert_array_equal(np.sort(vs.numpy(), axis=1), np.sort(v.numpy(), axis=1))
        np.testing.assert_array_equal(vs.numpy(), (x @ x.T).numpy()[np.arange(300)[:, None], is_.numpy()])


# ----------------------------- W_hat straight from the kNN lists (normalized_symmetric_knn)
def _reference_w_hat(indices: torch.Tensor, weights: torch.Tensor) -> graphprop.Graph:
    """sym_normalize(remove_self_loops(symmetrize(directed graph)) in float64), zero entries
    dropped: graphprop's general functions."""
    n, k = indices.shape
    rows = torch.arange(n).repeat_interleave(k)
    directed = graphprop.Graph(torch.stack([rows, indices.reshape(-1)]), weights.reshape(-1), n)
    ref = graphprop.sym_normalize(graphprop.remove_self_loops(graphprop.symmetrize(directed).to(dtype=torch.float64)))
    keep = ref.edge_weight != 0
    return graphprop.Graph(ref.edge_index[:, keep], ref.edge_weight[keep], n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, k", [(1, 1), (7, 3), (60, 9), (200, 200)])
def test_normalized_symmetric_graph_equals_graphprop_normalisation(dtype, n, k):
    """The same edges (sorted) and values as graphprop's general symmetrize / remove_self_loops
    / sym_normalize, with self-loops, zero weights (dropped), a node whose only edge is its
    self-loop; marked symmetric and its CSR cached, and the solve equals that on the
    reference graph."""
    from graphprop._knn import _normalized_symmetric_graph

    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    values, indices = knn_module._search(x, k, None, "ip", "torch", ordered=False, selection=True)
    weights = values.clamp_min(0).to(dtype)  # negative similarities: zero weights
    if n > 7:
        weights[0] = 0  # node 0: no weight of its own
        weights[indices == 0] = 0  # and nobody's
    fast = _normalized_symmetric_graph(indices, weights)
    ref = _reference_w_hat(indices, weights)
    assert torch.equal(fast.edge_index, ref.edge_index)
    assert fast.edge_weight.dtype == torch.float64
    torch.testing.assert_close(fast.edge_weight, ref.edge_weight, rtol=1e-15, atol=0)
    assert fast._derived["symmetric"][1] is True
    assert ref.is_symmetric()
    (ptr, col, val), (ref_ptr, ref_col, ref_val) = fast._receiver_csr(), ref._receiver_csr()
    np.testing.assert_array_equal(ptr, ref_ptr)
    np.testing.assert_array_equal(col, ref_col)
    np.testing.assert_allclose(val, ref_val, rtol=1e-15, atol=0)
    y = torch.rand(n, 3, generator=g, dtype=torch.float64)
    za = graphprop.label_propagation(fast, y, solver="cg", normalize=False, warn=False)
    zb = graphprop.label_propagation(ref, y, solver="cg", normalize=False, warn=False)
    torch.testing.assert_close(za, zb, rtol=1e-12, atol=1e-14)


def test_normalized_symmetric_graph_sorts_rows_and_sums_duplicates():
    """Rows in any order (torch.topk's) are sorted first; a neighbour listed twice adds up."""
    from graphprop._knn import _normalized_symmetric_graph

    g = torch.Generator().manual_seed(8)
    indices = torch.randint(0, 30, (30, 6), generator=g)  # duplicates within rows, any order
    weights = torch.rand(30, 6, generator=g, dtype=torch.float64)
    fast = _normalized_symmetric_graph(indices, weights)
    ref = _reference_w_hat(indices, weights)
    assert torch.equal(fast.edge_index, ref.edge_index)
    torch.testing.assert_close(fast.edge_weight, ref.edge_weight, rtol=1e-14, atol=0)
    w = torch.zeros(30, 30, dtype=torch.float64).index_put_((torch.arange(30).repeat_interleave(6),
                                                             indices.reshape(-1)), weights.reshape(-1), accumulate=True)
    w = w + w.T
    w.fill_diagonal_(0)
    d = w.sum(1)
    d[d == 0] = 1
    torch.testing.assert_close(fast.to_dense(), w / d.sqrt()[:, None] / d.sqrt()[None, :], rtol=1e-13, atol=0)


def test_normalized_symmetric_graph_rejects_bad_weights():
    from graphprop._knn import _normalized_symmetric_graph

    indices = torch.tensor([[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="finite and >= 0"):
        _normalized_symmetric_graph(indices, torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        _normalized_symmetric_graph(indices, torch.tensor([[1.0, float("inf")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="one shape"):
        _normalized_symmetric_graph(indices, torch.ones(2, 3))


def test_a_known_symmetry_is_dropped_when_the_graph_is_edited():
    """The symmetry a builder records is a cached value like any other: editing the weights
    in place makes is_symmetric() compute it again."""
    from graphprop._knn import _normalized_symmetric_graph

    g = torch.Generator().manual_seed(9)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    values, indices = knn_module._search(x, 5, None, "l2", "torch", ordered=False, selection=True)
    graph = _normalized_symmetric_graph(indices, torch.exp(-values))
    assert graph.is_symmetric()
    graph.edge_weight[0] += 1.0  # W[i, j] changed, W[j, i] not
    assert not graph.is_symmetric()
