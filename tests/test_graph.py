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
    with pytest.raises(TypeError, match="edge_index"):
        Graph(torch.zeros(2, 3), w, 4)  # float dtype
    with pytest.raises(TypeError, match="edge_index"):
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
    with pytest.raises(TypeError, match="edge_weight"):
        Graph(ei, torch.ones(3, dtype=torch.long), 3)  # not floating
    with pytest.raises(TypeError, match="edge_weight"):
        Graph(ei, [1.0, 1.0, 1.0], 3)  # not a tensor


def test_num_nodes_errors():
    with pytest.raises(ValueError, match="num_nodes"):
        Graph(_ei([], []).reshape(2, 0), torch.ones(0), -1)
    with pytest.raises(TypeError, match="num_nodes"):
        Graph(_ei([0], [0]), torch.ones(1), 1.0)
    with pytest.raises(TypeError, match="num_nodes"):
        Graph(_ei([0], [0]), torch.ones(1), True)
    assert Graph(_ei([0], [0]), torch.ones(1), np.int64(1)).num_nodes == 1  # a numpy integer is an integer


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


# ------------------------------------------------------------ the graph protocol
class DenseGraph:
    """A graph form the package does not know: W as a dense (N, N) tensor, implementing
    graphprop.PropagationGraph by plain dense algebra (the independent reference)."""

    auto_direct = True

    def __init__(self, w):
        self.w = w

    num_nodes = property(lambda self: self.w.size(0))
    dtype = property(lambda self: self.w.dtype)
    device = property(lambda self: self.w.device)
    weight_values = property(lambda self: self.w)

    def degree(self):
        return self.w.sum(1)

    def is_symmetric(self):
        return bool(torch.equal(self.w, self.w.T))

    def symmetrize(self):
        return DenseGraph(self.w + self.w.T)

    def remove_self_loops(self):
        return DenseGraph(self.w - torch.diag(torch.diag(self.w)))

    def sym_normalize(self):
        d = self.w.sum(1)
        s = torch.where(d > 0, d, 1.0).rsqrt()
        return DenseGraph(s[:, None] * self.w * s[None, :])

    def detach(self):
        return DenseGraph(self.w.detach())

    def matmul(self, z, out=None):
        return self.operator(z.dtype)(z, out=out)

    def operator(self, dtype=None):
        return _DenseOperator(self.w.to(dtype or self.dtype))

    def propagation_operator(self, dtype, *, normalize):
        w = self.remove_self_loops().w.T if normalize else self.w.T  # rows = receivers
        if normalize:
            d = w.sum(1)  # in-degrees of W
            s = torch.where(d > 0, d.clamp_min(1e-300).rsqrt(), 0.0)
            w = s[:, None] * w * s[None, :]
        return _DenseOperator(w.to(dtype))


class _DenseOperator:
    column_multiple = 1

    def __init__(self, m):
        self.m = m

    def __call__(self, z, out=None):
        return torch.matmul(self.m, z) if out is None else torch.matmul(self.m, z, out=out)


def _random_dense(seed, n, symmetric=False, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(n, n, generator=gen, dtype=dtype) * (torch.rand(n, n, generator=gen) < 0.4)
    return w + w.T if symmetric else w


def test_graph_and_grid_graph_implement_the_protocol():
    grid = graphprop.grid_graph(torch.rand(2, 4, 5), 1)
    for g in (Graph.from_dense(_random_dense(0, 6)), grid, DenseGraph(_random_dense(0, 6))):
        assert isinstance(g, graphprop.PropagationGraph)
    assert not isinstance(torch.eye(3), graphprop.PropagationGraph)
    assert not isinstance(grid.to_sparse_coo(), graphprop.PropagationGraph)


def test_operations_take_any_graph_of_the_protocol():
    w = _random_dense(1, 7)
    w[2, 2] = 0.5  # a self-loop
    ours, dense = Graph.from_dense(w), DenseGraph(w)
    torch.testing.assert_close(degree(ours), degree(dense))
    torch.testing.assert_close(symmetrize(ours).to_dense(), symmetrize(dense).w)
    torch.testing.assert_close(remove_self_loops(ours).to_dense(), remove_self_loops(dense).w)
    torch.testing.assert_close(sym_normalize(ours).to_dense(), sym_normalize(dense).w)
    assert isinstance(symmetrize(dense), DenseGraph)  # the class's own method ran


@pytest.mark.parametrize(("solver", "symmetric"), [(s, True) for s in ("auto", "cg", "fixed_point", "direct")]
                         + [(s, False) for s in ("auto", "fixed_point", "direct")])  # cg needs W == W^T
def test_label_propagation_takes_any_graph_of_the_protocol(solver, symmetric):
    w = _random_dense(2, 12, symmetric)
    y = torch.rand(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    kw = {"alpha": 0.8, "solver": solver, "tol": 1e-12, "max_iter": 300}
    for normalize in (True, False):
        scale = 1.0 if normalize else 0.1  # keeps alpha * W^T a contraction
        ours = graphprop.label_propagation(Graph.from_dense(w * scale), y, normalize=normalize, return_info=True, **kw)
        theirs = graphprop.label_propagation(DenseGraph(w * scale), y, normalize=normalize, return_info=True, **kw)
        assert ours.solver == theirs.solver
        torch.testing.assert_close(ours.z, theirs.z, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_graph_matmul_and_operator_contract(dtype, monkeypatch):
    from graphprop import _graph

    w = _random_dense(3, 20).to(dtype)
    w[:, 4] = 0  # a node nobody points to
    graph = Graph.from_dense(w)
    # a shuffled copy with duplicate edges: duplicates add up in the product
    perm = torch.randperm(2 * graph.num_edges, generator=torch.Generator().manual_seed(3))
    half = graph.edge_weight / 2
    dup = Graph(torch.cat([graph.edge_index] * 2, 1)[:, perm], torch.cat([half, graph.edge_weight - half])[perm], 20)
    z = torch.rand(5, 20, dtype=dtype).T  # (20, 5), not contiguous
    before = z.clone()
    for fallback in (False, True):  # the compiled CSR product and PyG's sparse product
        if fallback:
            monkeypatch.setattr(_graph, "_csr_kernels_usable", lambda g: False)
        for g in (graph, dup):
            op = g.operator()
            assert isinstance(op, graphprop.GraphOperator) and op.column_multiple >= 1
            torch.testing.assert_close(g.matmul(z), w @ z)
            out = torch.full((20, 5), float("nan"), dtype=dtype)
            assert g.matmul(z, out=out) is out  # out= is written and returned
            torch.testing.assert_close(out, w @ z)
            assert torch.equal(z, before)  # the input is never written
    with pytest.raises(ValueError, match="z must have N=20"):
        graph.matmul(torch.rand(19, 2, dtype=dtype))
    with pytest.raises(TypeError, match="z must be a floating"):
        graph.matmul(torch.ones(20, 2, dtype=torch.long))


@pytest.mark.parametrize("normalize", [True, False])
def test_propagation_operator_is_w_hat_transposed(normalize, monkeypatch):
    from graphprop import _graph

    w = _random_dense(4, 15)
    w[3, 3] = 2.0  # a self-loop: dropped by the normalisation
    w[:, 6] = 0  # in-degree 0: that node sends nothing once normalised
    graph = Graph.from_dense(w)
    expected = DenseGraph(w).propagation_operator(torch.float64, normalize=normalize).m  # the dense P
    eye = torch.eye(15, dtype=torch.float64)
    for fallback in (False, True):
        if fallback:
            monkeypatch.setattr(_graph, "_csr_kernels_usable", lambda g: False)
        p = graph.propagation_operator(torch.float64, normalize=normalize)
        torch.testing.assert_close(p(eye), expected, rtol=1e-12, atol=1e-14)


def test_detached_graph_shares_the_symmetry_cache(monkeypatch):
    graph = symmetrize(Graph.from_dense(_random_dense(5, 10)))
    weight = graph.edge_weight.clone().requires_grad_(True)
    grad_graph = Graph(graph.edge_index, weight, 10)
    assert graph.detach() is graph
    detached = grad_graph.detach()
    assert detached is not grad_graph and not detached.edge_weight.requires_grad
    calls = []
    real = Graph._compute_symmetric
    monkeypatch.setattr(Graph, "_compute_symmetric", lambda self: calls.append(1) or real(self))
    assert detached.is_symmetric() and grad_graph.is_symmetric()
    assert len(calls) == 1


# ------------------------------------------------------------------ validators
def test_validators_raise_one_error_type_per_kind_of_mistake():
    from graphprop._validation import check_choice, check_int, check_positive_int, check_range, check_tensor

    assert check_int("n", 0, minimum=0) == 0 and check_int("n", np.int32(3), minimum=1) == 3
    assert type(check_int("n", np.int64(3), minimum=1)) is int
    for bad in (1.5, 2.0, True, np.bool_(True), "3", None):
        with pytest.raises(TypeError, match="^n must be an integer"):
            check_int("n", bad, minimum=0)
    with pytest.raises(ValueError, match="^n must be an integer >= 0"):
        check_int("n", -1, minimum=0)
    assert check_positive_int("k", 2) == 2
    with pytest.raises(ValueError, match="^k must be a positive integer, got 0"):
        check_positive_int("k", 0)
    with pytest.raises(TypeError, match="^k must be a positive integer, got float 2.0"):
        check_positive_int("k", 2.0)
    with pytest.warns(DeprecationWarning, match="check_int"):
        assert check_positive_int("k", 0, minimum=0) == 0
    assert check_range("a", np.float32(0.5), low=0.0) == 0.5 and check_range("a", torch.tensor(0.5), low=0.0) == 0.5
    with pytest.raises(TypeError, match="^a must be a number"):
        check_range("a", "0.5", low=0.0)
    with pytest.raises(ValueError, match="^a must be in"):
        check_range("a", float("nan"), low=0.0)
    assert check_choice("s", "cg", ["cg", "direct"]) == "cg"
    with pytest.raises(ValueError, match="^s must be one of"):
        check_choice("s", "jacobi", ["cg", "direct"])
    with pytest.raises(TypeError, match="^s must be a str"):
        check_choice("s", 3, ["cg", "direct"])
    with pytest.raises(TypeError, match="^t must be a torch.Tensor"):
        check_tensor("t", [1.0])
    with pytest.raises(TypeError, match="^t must be a floating"):
        check_tensor("t", torch.ones(2, dtype=torch.long), floating=True)
    with pytest.raises(ValueError, match=r"^t must have 2 dimensions \(N, D\)"):
        check_tensor("t", torch.ones(2), dims=("N", "D"))


def test_label_propagation_argument_types():
    graph = symmetrize(Graph.from_dense(_random_dense(6, 8)))
    y = torch.rand(8, 2, dtype=torch.float64)
    for kwargs in ({"max_iter": 2.0}, {"max_iter": True}, {"alpha": "0.5"}, {"tol": None}, {"solver": 3}):
        with pytest.raises(TypeError, match=next(iter(kwargs))):
            graphprop.label_propagation(graph, y, **kwargs)
    for kwargs in ({"max_iter": 0}, {"alpha": 1.5}, {"tol": float("nan")}, {"solver": "jacobi"}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            graphprop.label_propagation(graph, y, **kwargs)
    with pytest.raises(TypeError, match="^y must be a torch.Tensor"):
        graphprop.label_propagation(graph, y.numpy())


# --------------------------------------------------------------- import graph
def _graphprop_imports():
    """{module: set of graphprop modules it imports}, from the source: module-level and
    function-level imports (what runs), not those under ``if TYPE_CHECKING:``."""
    import ast
    from pathlib import Path

    root = Path(graphprop.__file__).parent
    modules = {p.stem for p in root.glob("*.py")}

    def type_checking(node):
        return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)

    graph = {}
    for name in modules:
        found = set()
        stack = [ast.parse((root / f"{name}.py").read_text())]
        while stack:
            node = stack.pop()
            for child in ast.iter_child_nodes(node):
                if type_checking(child):
                    stack.extend(child.orelse)
                    continue
                stack.append(child)
                if isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level == 0 and not base.startswith("graphprop"):
                        continue
                    base = base.removeprefix("graphprop").lstrip(".")
                    if base:
                        found.add(base.split(".")[0])
                    else:  # from . import x: a module, or a name of the package itself
                        found.update(a.name if a.name in modules else "__init__" for a in child.names)
                elif isinstance(child, ast.Import):
                    found.update(a.name.split(".")[1] if "." in a.name else "__init__"
                                 for a in child.names if a.name.split(".")[0] == "graphprop")
        graph[name] = found - {name}
    return graph


def _find_cycle(graph):
    """One import cycle of ``graph`` as a list of modules, or None."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # the package's circle before the protocol: _graph -> _grid (lazy) -> _stencil -> _grid
    assert _find_cycle({"_graph": {"_grid"}, "_grid": {"_stencil", "_graph"}, "_stencil": {"_grid"}})


def test_graphprop_modules_import_no_circle():
    graph = _graphprop_imports()
    assert {"_graph", "_stencil", "_window"} <= graph["_grid"]  # the parser sees the imports
    assert "_numba_kernels" in graph["_stencil"]  # function-level ones too
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph))}"
    for leaf in ("_protocol", "_window", "_validation", "_cache"):
        assert graph[leaf] == set(), f"{leaf} should import nothing from graphprop, imports {graph[leaf]}"


def test_graph_grid_and_stencil_import_alone_in_any_order():
    """Each of the three modules imports in a fresh package (no ``graphprop/__init__``
    run first), in every order: none needs another half-initialised."""
    import itertools
    import subprocess
    import sys
    from pathlib import Path

    root = Path(graphprop.__file__).parent
    orders = list(itertools.permutations(["_graph", "_grid", "_stencil"]))
    script = f"""
import importlib, sys, types
for order in {orders!r}:
    for name in [m for m in sys.modules if m == "graphprop" or m.startswith("graphprop.")]:
        del sys.modules[name]
    package = types.ModuleType("graphprop")
    package.__path__ = [{str(root)!r}]
    sys.modules["graphprop"] = package  # the bare package: its __init__ does not run
    for name in order:
        importlib.import_module("graphprop." + name)
print("ok", len({orders!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok 6"
