import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import graphprop
from graphprop import Graph, degree, remove_self_loops, sym_normalize, symmetrize

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WEIGHTS = st.floats(0, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False)


# --------------------------------------------------------------------- strategies
@st.composite
def edge_lists(draw, max_nodes=7, max_edges=20, weights=WEIGHTS, min_nodes=0):
    """(n, src, dst, w) numpy arrays: random directed edges with self-loops and
    duplicate edges (some edges repeated with other weights)."""
    n = draw(st.integers(min_nodes, max_nodes))
    e = 0 if n == 0 else draw(st.integers(0, max_edges))
    node = st.integers(0, max(n - 1, 0))
    src = draw(arrays(np.int64, e, elements=node))
    dst = draw(arrays(np.int64, e, elements=node))
    w = draw(arrays(np.float64, e, elements=weights))
    dup = draw(st.integers(0, e))
    if dup:
        src = np.concatenate([src, src[:dup]])
        dst = np.concatenate([dst, dst[:dup]])
        w = np.concatenate([w, draw(arrays(np.float64, dup, elements=weights))])
    return n, src, dst, w


def dense_np(n, src, dst, w) -> np.ndarray:
    """The (N, N) weight matrix, duplicates summed, built with numpy."""
    W = np.zeros((n, n))
    np.add.at(W, (src, dst), w)
    return W


def make_graph(n, src, dst, w, dtype=torch.float64) -> Graph:
    edge_index = torch.from_numpy(np.stack([src, dst]).astype(np.int64).reshape(2, -1))
    return Graph(edge_index, torch.from_numpy(np.asarray(w, dtype=np.float64)).to(dtype), n)


def np_sym_normalize(W: np.ndarray) -> np.ndarray:
    d = W.sum(axis=1)
    d = np.where(d > 0, d, 1.0)
    s = 1.0 / np.sqrt(d)
    return s[:, None] * W * s[None, :]


def dense(g: Graph) -> np.ndarray:
    return g.to_dense().double().numpy()


def assert_coalesced(g: Graph) -> None:
    pairs = [tuple(p) for p in g.edge_index.t().tolist()]
    assert len(pairs) == len(set(pairs)), "duplicate edges after coalescing"
    assert pairs == sorted(pairs), "edges not sorted by (source, target)"


# --------------------------------------------------------------------- round trips
@st.composite
def dense_matrices(draw):
    n = draw(st.integers(0, 7))
    value = st.one_of(st.just(0.0), st.floats(-10, 10, allow_nan=False, allow_subnormal=False))
    return draw(arrays(np.float64, (n, n), elements=value))


@SETTINGS
@given(W=dense_matrices())
def test_dense_round_trip(W):
    g = Graph.from_dense(torch.from_numpy(W))
    assert g.num_nodes == W.shape[0]
    assert g.num_edges == np.count_nonzero(W)
    assert g.edge_index.dtype == torch.int64
    assert (g.edge_weight != 0).all()
    np.testing.assert_array_equal(dense(g), W)


@SETTINGS
@given(case=edge_lists())
def test_to_dense_sums_duplicates(case):
    n, src, dst, w = case
    g = make_graph(n, src, dst, w)
    assert g.num_edges == len(src)
    out = g.to_dense()
    assert out.shape == (n, n) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), dense_np(n, src, dst, w), rtol=1e-12, atol=1e-12)


def test_to_dense_duplicates_explicit():
    g = Graph(torch.tensor([[0, 0, 1, 0], [1, 1, 1, 1]]), torch.tensor([1.0, 2.0, 5.0, 0.5]), 2)
    np.testing.assert_array_equal(g.to_dense().numpy(), [[0.0, 3.5], [0.0, 5.0]])


@SETTINGS
@given(case=edge_lists())
def test_sparse_round_trips(case):
    n, src, dst, w = case
    g = make_graph(n, src, dst, w)
    W = dense_np(n, src, dst, w)
    coo = g.to_sparse_coo()
    assert coo.layout == torch.sparse_coo and coo.is_coalesced() and coo.shape == (n, n)
    np.testing.assert_allclose(coo.to_dense().numpy(), W, rtol=1e-12, atol=1e-12)
    csr = g.to_sparse_csr()
    assert csr.layout == torch.sparse_csr
    np.testing.assert_allclose(csr.to_dense().numpy(), W, rtol=1e-12, atol=1e-12)
    for matrix in (coo, csr, coo.to_sparse_csc()):
        back = Graph.from_sparse(matrix)
        assert back.num_nodes == n
        assert_coalesced(back)
        assert back.num_edges == len({(a, b) for a, b in zip(src.tolist(), dst.tolist(), strict=True)})
        np.testing.assert_allclose(dense(back), W, rtol=1e-12, atol=1e-12)
    c = g.coalesce()
    assert_coalesced(c)
    np.testing.assert_allclose(dense(c), W, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(case=edge_lists())
def test_pyg_round_trip(case):
    from torch_geometric.utils import to_torch_coo_tensor

    n, src, dst, w = case
    g = make_graph(n, src, dst, w)
    data = g.to_pyg()
    assert data.num_nodes == n
    assert torch.equal(data.edge_index, g.edge_index)
    assert torch.equal(data.edge_weight, g.edge_weight)
    back = Graph.from_pyg(data)
    assert back.num_nodes == n
    assert torch.equal(back.edge_index, g.edge_index)
    assert torch.equal(back.edge_weight, g.edge_weight)
    # the same matrix as PyG's own reading of (edge_index, edge_weight)
    W = dense_np(n, src, dst, w)
    with warnings.catch_warnings():  # "Sparse invariant checks are implicitly disabled"
        warnings.simplefilter("ignore", UserWarning)
        pyg = to_torch_coo_tensor(data.edge_index, data.edge_weight, size=n).to_dense()
    np.testing.assert_allclose(pyg.numpy(), W, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dense(back), W, rtol=1e-12, atol=1e-12)


def test_from_pyg_without_weights_uses_ones():
    from torch_geometric.data import Data

    data = Data(edge_index=torch.tensor([[0, 1, 1], [1, 2, 2]]), num_nodes=4)
    g = Graph.from_pyg(data)
    assert g.num_nodes == 4
    np.testing.assert_array_equal(
        g.to_dense().numpy(), [[0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    )


def test_to_changes_dtype_and_is_frozen():
    g = Graph(torch.tensor([[0, 1], [1, 0]]), torch.tensor([0.25, 3.0], dtype=torch.float64), 3)
    g32 = g.to(dtype=torch.float32)
    assert g32.dtype == torch.float32 and g32.edge_index.dtype == torch.int64
    assert g32.num_nodes == 3
    np.testing.assert_array_equal(g32.to_dense().numpy(), g.to_dense().numpy())
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.num_nodes = 5  # type: ignore[misc]


# --------------------------------------------------------------------- operations
@SETTINGS
@given(case=edge_lists())
def test_symmetrize_equals_w_plus_wt(case):
    n, src, dst, w = case
    W = dense_np(n, src, dst, w)
    s = symmetrize(make_graph(n, src, dst, w))
    assert isinstance(s, Graph) and s.num_nodes == n
    assert_coalesced(s)
    out = dense(s)
    np.testing.assert_allclose(out, W + W.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, out.T, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(case=edge_lists())
def test_remove_self_loops(case):
    n, src, dst, w = case
    W = dense_np(n, src, dst, w)
    np.fill_diagonal(W, 0.0)
    r = remove_self_loops(make_graph(n, src, dst, w))
    assert (r.edge_index[0] != r.edge_index[1]).all()
    assert r.num_edges == int((src != dst).sum())
    np.testing.assert_allclose(dense(r), W, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(case=edge_lists())
def test_degree_is_row_sums(case):
    n, src, dst, w = case
    d = degree(make_graph(n, src, dst, w))
    assert d.shape == (n,) and d.dtype == torch.float64
    np.testing.assert_allclose(d.numpy(), dense_np(n, src, dst, w).sum(axis=1), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(case=edge_lists())
def test_sym_normalize_matches_numpy(case):
    """Directed graphs included: a node may have zero out-degree but in-edges."""
    n, src, dst, w = case
    out = sym_normalize(make_graph(n, src, dst, w))
    assert isinstance(out, Graph) and out.num_nodes == n
    np.testing.assert_allclose(dense(out), np_sym_normalize(dense_np(n, src, dst, w)),
                               rtol=1e-10, atol=1e-12)


def test_sym_normalize_zero_degree_counts_as_one():
    # node 2 has no out-edges (degree 0 -> 1); node 3 is isolated
    g = Graph(torch.tensor([[0, 1, 0], [1, 2, 2]]), torch.tensor([4.0, 9.0, 5.0], dtype=torch.float64), 4)
    expected = np.zeros((4, 4))
    expected[0, 1] = 4.0 / np.sqrt(9.0) / np.sqrt(9.0)
    expected[1, 2] = 9.0 / np.sqrt(9.0) / 1.0
    expected[0, 2] = 5.0 / np.sqrt(9.0) / 1.0
    np.testing.assert_allclose(sym_normalize(g).to_dense().numpy(), expected, rtol=1e-14)


@SETTINGS
@given(case=edge_lists(min_nodes=1))
def test_sym_normalize_symmetric_spectrum(case):
    n, src, dst, w = case
    # W + W^T built directly from both edge directions (not with graphprop.symmetrize)
    g = make_graph(n, np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w]))
    out = dense(sym_normalize(g))
    np.testing.assert_allclose(out, out.T, rtol=1e-12, atol=1e-12)
    eig = np.linalg.eigvalsh(out)
    assert eig.min() >= -1 - 1e-9 and eig.max() <= 1 + 1e-9, eig


@SETTINGS
@given(case=edge_lists(min_nodes=1, weights=st.integers(1, 8).map(float)))
def test_sym_normalize_float32_denormal_weights(case):
    """Weights that are small multiples of the smallest float32 denormal (1.4e-45): the
    degrees are denormal, d^-1/2 ~ 1e22, d_i^-1/2 * d_j^-1/2 would overflow. The result
    must be finite and equal the normalisation of the integer weights (it is scale
    invariant when no degree is zero: every node gets a self-loop)."""
    n, src, dst, m = case
    src = np.concatenate([src, np.arange(n)])
    dst = np.concatenate([dst, np.arange(n)])
    m = np.concatenate([m, np.ones(n)])
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    w32 = torch.from_numpy(m.astype(np.float32) * tiny)
    assert (w32 > 0).all() and (w32 < 1e-43).all()
    edge_index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
    out = sym_normalize(Graph(edge_index, w32, n))
    assert out.dtype == torch.float32
    assert torch.isfinite(out.edge_weight).all()
    np.testing.assert_allclose(dense(out), np_sym_normalize(dense_np(n, src, dst, m)), rtol=1e-5, atol=1e-6)


def test_sym_normalize_float32_tiny_weights_stay_finite():
    g = Graph(torch.tensor([[0, 0, 1], [1, 0, 0]]), torch.tensor([1e-44, 1e-44, 3e-45], dtype=torch.float32), 2)
    out = sym_normalize(g)
    assert torch.isfinite(out.edge_weight).all()
    assert (out.edge_weight > 0).all()


@SETTINGS
@given(case=edge_lists(min_nodes=1), data=st.data())
def test_sym_normalize_relabelling(case, data):
    n, src, dst, w = case
    perm = np.array(data.draw(st.permutations(range(n))), dtype=np.int64)
    out = dense(sym_normalize(make_graph(n, src, dst, w)))
    out_p = dense(sym_normalize(make_graph(n, perm[src], perm[dst], w)))
    # node i is called perm[i]: out_p[perm[i], perm[j]] == out[i, j]
    expected = np.zeros_like(out)
    expected[np.ix_(perm, perm)] = out
    np.testing.assert_allclose(out_p, expected, rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------------------- errors
def _ei(*rows):
    return torch.tensor(rows, dtype=torch.long)


def test_edge_index_errors():
    w = torch.ones(3)
    with pytest.raises(ValueError, match="edge_index"):
        Graph(torch.zeros(3, 3, dtype=torch.long), w, 4)  # (3, E)
    with pytest.raises(ValueError, match="edge_index"):
        Graph(torch.zeros(6, dtype=torch.long), w, 4)  # 1-D
    with pytest.raises(ValueError, match="edge_index"):
        Graph(torch.zeros(2, 3, 1, dtype=torch.long), w, 4)
    with pytest.raises((TypeError, ValueError), match="edge_index"):
        Graph(torch.zeros(2, 3), w, 4)  # float dtype
    with pytest.raises((TypeError, ValueError), match="edge_index"):
        Graph(torch.zeros(2, 3, dtype=torch.int32), w, 4)
    with pytest.raises(ValueError, match="edge_index"):
        Graph(_ei([0, 1, 4], [0, 0, 0]), w, 4)  # index == num_nodes
    with pytest.raises(ValueError, match="edge_index"):
        Graph(_ei([0, 1, 2], [0, -1, 0]), w, 4)
    with pytest.raises(ValueError, match="edge_index"):
        Graph(_ei([0], [0]), torch.ones(1), 0)
    with pytest.raises(TypeError, match="edge_index"):
        Graph([[0, 1], [1, 0]], torch.ones(2), 2)  # not a tensor


def test_edge_weight_errors():
    ei = _ei([0, 1, 2], [1, 2, 0])
    with pytest.raises(ValueError, match="edge_weight"):
        Graph(ei, torch.ones(2), 3)  # too short
    with pytest.raises(ValueError, match="edge_weight"):
        Graph(ei, torch.ones(4), 3)  # too long
    with pytest.raises(ValueError, match="edge_weight"):
        Graph(ei, torch.ones(3, 1), 3)  # 2-D
    with pytest.raises(ValueError, match="edge_weight"):
        Graph(ei, torch.tensor([1.0, float("nan"), 1.0]), 3)
    with pytest.raises(ValueError, match="edge_weight"):
        Graph(ei, torch.tensor([1.0, float("inf"), 1.0]), 3)
    with pytest.raises(ValueError, match="edge_weight"):
        Graph(ei, torch.tensor([1.0, 2.0, float("-inf")], dtype=torch.float64), 3)
    with pytest.raises((TypeError, ValueError), match="edge_weight"):
        Graph(ei, torch.ones(3, dtype=torch.long), 3)  # not floating


def test_num_nodes_errors():
    with pytest.raises(ValueError, match="num_nodes"):
        Graph(_ei([], []).reshape(2, 0), torch.ones(0), -1)
    with pytest.raises(ValueError, match="num_nodes"):
        Graph(_ei([0], [0]), torch.ones(1), 1.0)


def test_sym_normalize_negative_weight_rejected():
    g = Graph(_ei([0, 1], [1, 0]), torch.tensor([1.0, -0.5]), 2)
    with pytest.raises(ValueError):
        sym_normalize(g)
    # a negative weight is otherwise a valid graph
    np.testing.assert_array_equal(degree(g).numpy(), [1.0, -0.5])


def test_operations_reject_non_graphs():
    for fn in (symmetrize, remove_self_loops, sym_normalize, degree):
        with pytest.raises(TypeError, match="graph"):
            fn(torch.eye(3))


def test_from_dense_and_from_sparse_errors():
    with pytest.raises(ValueError, match="square"):
        Graph.from_dense(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="matrix"):
        Graph.from_dense(torch.zeros(3))
    with pytest.raises(TypeError, match="sparse"):
        Graph.from_sparse(torch.eye(3))


def test_empty_graph():
    g = Graph(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), 3)
    np.testing.assert_array_equal(g.to_dense().numpy(), np.zeros((3, 3)))
    for op in (symmetrize, remove_self_loops, sym_normalize):
        out = op(g)
        assert out.num_nodes == 3 and out.num_edges == 0
    np.testing.assert_array_equal(degree(g).numpy(), np.zeros(3))
    assert graphprop.Graph.from_dense(torch.zeros(0, 0)).num_nodes == 0


def test_csr_of_sorted_and_unsorted_edges_equals_dense():
    # sorted without duplicates (the fast path, e.g. symmetrize's output) and shuffled
    gen = torch.Generator().manual_seed(7)
    dense = torch.rand(12, 12, generator=gen, dtype=torch.float64) * (torch.rand(12, 12, generator=gen) < 0.4)
    graph = graphprop.symmetrize(graphprop.Graph.from_dense(dense))
    shuffled = torch.randperm(graph.num_edges, generator=gen)
    unsorted = graphprop.Graph(graph.edge_index[:, shuffled], graph.edge_weight[shuffled], 12)
    for g in (graph, unsorted):
        csr = g.to_sparse_csr()
        assert csr.layout == torch.sparse_csr
        torch.testing.assert_close(csr.to_dense(), (dense + dense.T))
