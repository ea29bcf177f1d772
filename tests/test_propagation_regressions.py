"""Regression tests for issue 12 (graphprop on real graphs): one test, or a few, per
finding, each against an independent computation (dense numpy solves, PyG)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphprop as gp
from graphprop import _graph, _propagation

SETTINGS = settings(max_examples=12, deadline=None)


def ring(n: int, weight: float, dtype=torch.float64) -> gp.Graph:
    """An undirected n-cycle, every edge stored in both directions."""
    i = torch.arange(n)
    j = (i + 1) % n
    ei = torch.stack([torch.cat([i, j]), torch.cat([j, i])])
    return gp.Graph(ei, torch.full((2 * n,), weight, dtype=dtype), n)


def dense_propagation(w: np.ndarray, y: np.ndarray, alpha: float, normalize: bool = True) -> np.ndarray:
    """Z of ``(I - alpha P) Z = Y`` with PyG's convention written out: ``P = W_hat^T``,
    ``W_hat = D^-1/2 W D^-1/2`` without the diagonal, D the column sums (in-degree)."""
    w = w.astype(np.float64).copy()
    if normalize:
        np.fill_diagonal(w, 0)
        d = w.sum(0)
        d[d == 0] = 1
        w = w / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    return np.linalg.solve(np.eye(len(w)) - alpha * w.T, y)


def random_directed(seed: int, n: int, density: float = 0.2, weighted: bool = True) -> gp.Graph:
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, n, generator=gen) < density) & ~torch.eye(n, dtype=torch.bool)
    w = (torch.rand(n, n, generator=gen, dtype=torch.float64) + 0.1 if weighted
         else torch.ones(n, n, dtype=torch.float64))
    return gp.Graph.from_dense(w * mask)


# ------------------------------------------------ 1. default call, cg's warning
def test_default_solver_is_auto_and_exact_on_a_small_graph():
    graph = random_directed(0, 60, 0.1)
    y = torch.rand(60, 3, dtype=torch.float64)
    info = gp.label_propagation(graph, y, return_info=True)  # alpha 0.95, max_iter 10
    assert info.solver == "direct"
    np.testing.assert_allclose(info.z.numpy(), dense_propagation(graph.to_dense().numpy(), y.numpy(), 0.95),
                               rtol=1e-10, atol=1e-12)


def test_auto_rule(monkeypatch):
    monkeypatch.setattr(_propagation, "AUTO_DIRECT_MAX_NODES", 10)
    y = torch.rand(30, 2, dtype=torch.float64)
    sym = gp.symmetrize(random_directed(1, 30))
    assert gp.label_propagation(sym, y, return_info=True).solver == "cg"
    assert gp.label_propagation(random_directed(1, 30), y, return_info=True).solver == "fixed_point"
    assert gp.label_propagation(ring(8, 1.0), y[:8], return_info=True).solver == "direct"
    grid = gp.grid_graph(torch.rand(3, 3, 3, dtype=torch.float64), 1)  # 9 nodes, but a grid graph
    assert gp.label_propagation(grid, y[:9], return_info=True).solver == "cg"


def two_clusters() -> tuple[gp.Graph, torch.Tensor]:
    """Two 10-node cliques joined by one edge of weight 1e-12, one labelled node (node 0 with
    column 0, node 1 with column 1), both in the first clique: the other clique's scores are
    ~1e-12, below what a 10-iteration CG at tol 1e-6 resolves."""
    w = np.zeros((20, 20))
    w[:10, :10] = 1
    w[10:, 10:] = 1
    w[9, 10] = w[10, 9] = 1e-12
    np.fill_diagonal(w, 0)
    y = torch.zeros(20, 2, dtype=torch.float64)
    y[0, 0] = y[1, 1] = 1
    return gp.Graph.from_dense(torch.from_numpy(w)), y


def test_cg_warns_when_rows_are_below_its_residual():
    graph, y = two_clusters()
    with pytest.warns(gp.ConvergenceWarning, match="10 of 20 rows .* below the residual"):
        gp.label_propagation(graph, y, alpha=0.5, tol=1e-6, solver="cg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gp.label_propagation(graph, y, alpha=0.5, tol=1e-6)  # auto: direct, exact
        gp.label_propagation(graph, y, alpha=0.5, tol=1e-30, max_iter=100, solver="cg")
        # warn=False silences it (the LPOSS stages: 10 iterations by design), with the same Z
        quiet = gp.label_propagation(graph, y, alpha=0.5, tol=1e-6, solver="cg", warn=False)
    with pytest.warns(gp.ConvergenceWarning, match="below the residual"):
        loud = gp.label_propagation(graph, y, alpha=0.5, tol=1e-6, solver="cg")
    torch.testing.assert_close(quiet, loud, rtol=0, atol=0)


# ------------------------------------------ 2. normalise in float64, then cast
@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
def test_tiny_float64_weights_with_float32_scores(solver):
    y = torch.rand(10, 2, generator=torch.Generator().manual_seed(0))
    kw = {"solver": solver, "tol": 1e-7, "max_iter": 50}
    tiny = gp.label_propagation(ring(10, 1e-300), y, **kw)
    unit = gp.label_propagation(ring(10, 1.0), y, **kw)
    assert not torch.equal(tiny, y)
    torch.testing.assert_close(tiny, unit, rtol=1e-6, atol=1e-6)


def test_float32_scores_on_a_float64_graph_give_the_float64_answer():
    gen = torch.Generator().manual_seed(3)
    w = torch.exp(-400 * torch.rand(50, 50, generator=gen, dtype=torch.float64))  # 1e-174 .. 1
    graph = gp.Graph.from_dense(w + w.T)
    y = (torch.rand(50, 3, generator=gen) < 0.1).to(torch.float64)
    for solver in ("direct", "cg", "fixed_point"):
        z64 = gp.label_propagation(graph, y, alpha=0.2, solver=solver, warn=False)
        z32 = gp.label_propagation(graph, y.float(), alpha=0.2, solver=solver, warn=False)
        assert z32.dtype == torch.float64 and torch.equal(z32, z64)


def test_float32_scores_on_a_float32_graph_are_the_float64_answer_cast():
    gen = torch.Generator().manual_seed(3)
    w = torch.exp(-80 * torch.rand(50, 50, generator=gen))  # 1e-35 .. 1, float32
    graph = gp.Graph.from_dense(w + w.T)
    y = (torch.rand(50, 3, generator=gen) < 0.1).to(torch.float64)
    z64 = gp.label_propagation(graph, y, alpha=0.2, solver="direct")
    z32 = gp.label_propagation(graph, y.float(), alpha=0.2, solver="direct")
    assert z32.dtype == torch.float32 and torch.equal(z32, z64.float())


@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
@pytest.mark.parametrize(("weights", "scores", "expected"), [
    (torch.float32, torch.float32, torch.float32), (torch.float32, torch.float64, torch.float64),
    (torch.float64, torch.float32, torch.float64), (torch.float64, torch.float64, torch.float64),
])
def test_z_dtype_is_the_promotion_of_y_and_the_weights(solver, weights, scores, expected):
    graph = gp.symmetrize(random_directed(4, 12)).to(dtype=weights)
    y = torch.rand(12, 2, generator=torch.Generator().manual_seed(0)).to(scores)
    kw = {"alpha": 0.5, "solver": solver, "warn": False}
    for form in (graph, graph.to_sparse_coo()):
        info = gp.label_propagation(form, y, return_info=True, **kw)
        assert info.z.dtype == expected and info.residual.dtype == expected
        assert gp.label_propagation(form, y[:, 0], **kw).dtype == expected
    grid = gp.grid_graph(torch.rand(3, 3, 4, dtype=weights), 1)
    assert gp.label_propagation(grid, y, **kw).dtype == expected


def test_rows_of_a_float64_solution_below_float32_warn_when_cast():
    """``"direct"`` on a float32 graph with float32 y solves in float64, then casts: on a
    120-node path labelled at one end the scores fall about 10x per node, so rows past
    the 45th are below float32's smallest number and come out 0, with a warning."""
    n = 120
    i = torch.arange(n - 1)
    graph = gp.Graph(torch.stack([torch.cat([i, i + 1]), torch.cat([i + 1, i])]), torch.ones(2 * (n - 1)), n)
    y = torch.zeros(n, 1)
    y[0] = 1
    z64 = gp.label_propagation(graph, y.double(), alpha=0.2, solver="direct")
    lost = int(((z64[:, 0] > 0) & (z64[:, 0].float() == 0)).sum())
    assert lost > 0 and bool((z64[:, 0] > 0).all())
    with pytest.warns(gp.ConvergenceWarning, match=f"{lost} of {n} rows .*below the smallest torch.float32"):
        z32 = gp.label_propagation(graph, y, alpha=0.2, solver="direct")
    assert z32.dtype == torch.float32 and torch.equal(z32, z64.float())


# ----------------------------------------------- 3. exact, cached symmetry check
def test_a_directed_part_of_a_large_graph_is_not_accepted_by_cg():
    n = 200_000
    big = ring(n, 1.0)
    cyc = torch.tensor([[n, n + 1, n + 2], [n + 1, n + 2, n]])
    graph = gp.Graph(torch.cat([big.edge_index, cyc], 1), torch.cat([big.edge_weight, torch.tensor([1.0, 2.0, 3.0],
                     dtype=torch.float64)]), n + 3)
    assert not graph.is_symmetric()
    y = torch.ones(n + 3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"symmetric .*symmetrize\(graph\).*solver='fixed_point'"):
        gp.label_propagation(graph, y, solver="cg")
    z = gp.label_propagation(graph, y, alpha=0.5, solver="fixed_point", tol=1e-12, max_iter=1000)
    w3 = np.zeros((3, 3))
    w3[0, 1], w3[1, 2], w3[2, 0] = 1.0, 2.0, 3.0
    np.testing.assert_allclose(z[n:, 0].numpy(), dense_propagation(w3, np.ones((3, 1)), 0.5)[:, 0], rtol=1e-9)
    np.testing.assert_allclose(z[:n].numpy(), 2.0, rtol=1e-9)  # the ring: (1 - 0.5)^-1


def test_symmetry_check_is_cached_and_sees_in_place_edits(monkeypatch):
    graph = gp.symmetrize(random_directed(2, 40))
    calls = []
    real = gp.Graph._compute_symmetric
    monkeypatch.setattr(gp.Graph, "_compute_symmetric", lambda self: calls.append(1) or real(self))
    y = torch.rand(40, 2, dtype=torch.float64)
    for _ in range(3):
        gp.label_propagation(graph, y, solver="cg")
    assert len(calls) == 1
    graph.edge_weight[0] += 1.0  # now W != W^T
    with pytest.raises(ValueError, match="symmetric"):
        gp.label_propagation(graph, y, solver="cg")
    assert len(calls) == 2


@SETTINGS
@given(st.integers(0, 10_000), st.integers(1, 25), st.booleans(), st.sampled_from([torch.float32, torch.float64]))
def test_is_symmetric_equals_the_dense_test(seed, n, make_symmetric, dtype):
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(n, n, generator=gen, dtype=torch.float64) * (torch.rand(n, n, generator=gen) < 0.3)
    if make_symmetric:
        w = w + w.T
    graph = gp.Graph.from_dense(w.to(dtype))
    # the same matrix with duplicated, shuffled edges: split each weight in two
    perm = torch.randperm(2 * graph.num_edges, generator=gen)
    half = graph.edge_weight / 2
    dup = gp.Graph(torch.cat([graph.edge_index] * 2, 1)[:, perm], torch.cat([half, graph.edge_weight - half])[perm], n)
    expected = bool(torch.equal(w, w.T))
    assert graph.is_symmetric() == expected
    assert dup.is_symmetric() == expected
    assert dup._compute_symmetric() == _torch_is_symmetric(dup)


def _torch_is_symmetric(graph):
    """The torch fallback (used off CPU) on the same graph."""
    real = _graph._csr_kernels_usable
    try:
        _graph._csr_kernels_usable = lambda g: False
        return gp.Graph(graph.edge_index, graph.edge_weight, graph.num_nodes)._compute_symmetric()
    finally:
        _graph._csr_kernels_usable = real


# ---------------------------------------------------- 4. PyG's convention exactly
@SETTINGS
@given(st.integers(0, 10_000), st.integers(2, 30), st.integers(1, 12), st.floats(0.05, 0.99))
def test_directed_unweighted_equals_pyg_label_propagation(seed, n, layers, alpha):
    from torch_geometric.nn import LabelPropagation

    graph = random_directed(seed, n, 0.25, weighted=False)
    y = torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ours = gp.label_propagation(graph, y, alpha=alpha, tol=0.0, max_iter=layers, solver="fixed_point")
    # PyG normalises with gcn_norm when no edge_weight is given (in float32); no clamping
    pyg = LabelPropagation(num_layers=layers, alpha=alpha)(y, graph.edge_index, post_step=lambda t: t)
    torch.testing.assert_close(ours * (1 - alpha), pyg, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(st.integers(0, 10_000), st.integers(2, 30), st.integers(1, 12))
def test_directed_weighted_normalize_false_equals_pyg_with_edge_weight(seed, n, layers):
    from torch_geometric.nn import LabelPropagation
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    graph = random_directed(seed, n, 0.25)
    y = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    prop = LabelPropagation(num_layers=layers, alpha=0.7)
    raw = gp.Graph(graph.edge_index, graph.edge_weight / 10, n)
    ours = gp.label_propagation(raw, y, alpha=0.7, tol=0.0, max_iter=layers, solver="fixed_point", normalize=False)
    pyg = prop(y, raw.edge_index, edge_weight=raw.edge_weight, post_step=lambda t: t)
    torch.testing.assert_close(ours * 0.3, pyg, rtol=1e-10, atol=1e-12)
    # weighted normalisation: ours normalises, PyG is handed gcn_norm's weights
    ours = gp.label_propagation(graph, y, alpha=0.7, tol=0.0, max_iter=layers, solver="fixed_point")
    ei, ew = gcn_norm(graph.edge_index, graph.edge_weight, n, add_self_loops=False)
    pyg = prop(y, ei, edge_weight=ew, post_step=lambda t: t)
    torch.testing.assert_close(ours * 0.3, pyg, rtol=1e-10, atol=1e-12)


def test_directed_argmax_equals_pyg_with_its_defaults():
    from torch_geometric.nn import LabelPropagation

    graph = random_directed(7, 300, 0.02, weighted=False)
    labels = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(300, dtype=torch.bool)
    mask[::5] = True
    y = torch.zeros(300, 4, dtype=torch.float64)
    y[mask, labels[mask]] = 1
    pyg = LabelPropagation(num_layers=10, alpha=0.9)(labels, graph.edge_index, mask=mask)  # clamps to [0, 1]
    unclamped = LabelPropagation(num_layers=10, alpha=0.9)(labels, graph.edge_index, mask=mask, post_step=lambda t: t)
    assert float(unclamped.max()) <= 1.0  # so the clamp is inactive: the same iterates
    ours = gp.label_propagation(graph, y, alpha=0.9, tol=0.0, max_iter=10, solver="fixed_point")
    torch.testing.assert_close((ours * 0.1).float(), pyg, rtol=1e-5, atol=1e-7)
    reached = pyg.max(1).values > 0
    assert bool((ours.argmax(1) == pyg.argmax(1))[reached].all())


@pytest.mark.parametrize("solver", ["fixed_point", "direct"])
def test_directed_solution_equals_the_dense_pyg_convention(solver):
    graph = random_directed(4, 40, 0.15)
    y = torch.rand(40, 3, dtype=torch.float64)
    z = gp.label_propagation(graph, y, alpha=0.8, solver=solver, tol=1e-13, max_iter=1000)
    np.testing.assert_allclose(z.numpy(), dense_propagation(graph.to_dense().numpy(), y.numpy(), 0.8),
                               rtol=1e-9, atol=1e-11)
    z = gp.label_propagation(gp.Graph(graph.edge_index, graph.edge_weight / 20, 40), y, alpha=0.8, solver=solver,
                             tol=1e-13, max_iter=1000, normalize=False)
    np.testing.assert_allclose(z.numpy(), dense_propagation(graph.to_dense().numpy() / 20, y.numpy(), 0.8, False),
                               rtol=1e-9, atol=1e-11)


def test_directed_grid_graph_follows_the_edge_direction():
    gen = torch.Generator().manual_seed(5)
    grid = gp.GridGraph(torch.rand(8, 4, 5, generator=gen, dtype=torch.float64), 1)  # not symmetric
    explicit = grid.to_graph()
    y = torch.rand(20, 2, generator=gen, dtype=torch.float64)
    for solver in ("fixed_point", "direct"):
        kw = {"alpha": 0.9, "solver": solver, "tol": 0.0, "max_iter": 6}
        torch.testing.assert_close(gp.label_propagation(grid, y, **kw), gp.label_propagation(explicit, y, **kw))


def test_torch_fallback_operator_equals_the_csr_kernel(monkeypatch):
    graph = random_directed(9, 50, 0.2)
    graph = gp.Graph(torch.cat([graph.edge_index, graph.edge_index[:, :30], torch.tensor([[3], [3]])], 1),
                     torch.cat([graph.edge_weight, graph.edge_weight[:30], torch.tensor([2.0], dtype=torch.float64)]),
                     50)  # duplicates and a self-loop
    y = torch.rand(50, 3, dtype=torch.float64)
    kw = {"alpha": 0.9, "solver": "fixed_point", "tol": 0.0, "max_iter": 8}
    for normalize in (True, False):
        fast = gp.label_propagation(graph, y, normalize=normalize, **kw)
        monkeypatch.setattr(_graph, "_csr_kernels_usable", lambda g: False)
        slow = gp.label_propagation(graph, y, normalize=normalize, **kw)
        monkeypatch.undo()
        torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------- 5. autograd
@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
def test_inputs_that_require_grad(solver):
    graph = gp.symmetrize(random_directed(3, 30))
    weight = graph.edge_weight.clone().requires_grad_(True)
    y = torch.rand(30, 2, dtype=torch.float64, requires_grad=True)
    z = gp.label_propagation(gp.Graph(graph.edge_index, weight, 30), y, solver=solver)
    assert not z.requires_grad
    torch.testing.assert_close(z, gp.label_propagation(graph, y.detach(), solver=solver))
    grid = gp.grid_graph(torch.rand(2, 5, 6, dtype=torch.float64), 1)
    gz = gp.label_propagation(gp.GridGraph(grid.weights.clone().requires_grad_(True), 1), y, solver=solver)
    torch.testing.assert_close(gz, gp.label_propagation(grid, y.detach(), solver=solver))


# ---------------------------------------------------------------- 6. overflow
@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
def test_huge_float32_scores(solver):
    graph = gp.symmetrize(random_directed(5, 40, 0.2)).to(dtype=torch.float32)
    y = torch.rand(40, 3, generator=torch.Generator().manual_seed(0))
    kw = {"solver": solver, "tol": 1e-6, "max_iter": 30}
    small = gp.label_propagation(graph, y, **kw)
    big = gp.label_propagation(graph, y * 2.0**70, **kw)  # 1e21: ||y||^2 overflows float32
    torch.testing.assert_close(big, small * 2.0**70, rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
def test_weights_whose_degrees_overflow(solver):
    y = torch.rand(12, 2, dtype=torch.float64)
    kw = {"solver": solver, "tol": 1e-12, "max_iter": 200}
    torch.testing.assert_close(gp.label_propagation(ring(12, 1e308), y, **kw),
                               gp.label_propagation(ring(12, 1.0), y, **kw))
    assert ring(12, 1e308).is_symmetric()


def test_an_overflowing_solution_is_an_error():
    y = torch.rand(12, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="overflows torch.float32.*normalize=False"):
        gp.label_propagation(ring(12, 1e30, torch.float32), y, normalize=False, alpha=0.5, solver="fixed_point")
    with pytest.raises(ValueError, match="overflows torch.float32"):
        gp.label_propagation(ring(12, 1.0, torch.float32), torch.full((12, 1), 3e38), alpha=0.9, solver="direct")


# ------------------------------------------------------------ 7. smaller ones
def test_fixed_point_float32_residual_is_that_of_the_returned_z():
    graph = gp.symmetrize(random_directed(6, 60, 0.1)).to(dtype=torch.float32)
    y = torch.rand(60, 2, generator=torch.Generator().manual_seed(1))
    info = gp.label_propagation(graph, y, alpha=0.9, tol=0.0, max_iter=600, solver="fixed_point", return_info=True)
    w_hat = _w_hat(graph.to_dense().double().numpy())
    yd = y.double().numpy()
    true = np.linalg.norm(yd - (np.eye(60) - 0.9 * w_hat) @ info.z.double().numpy(), axis=0)
    ratio = info.residual.double().numpy() / (true / np.linalg.norm(yd, axis=0))
    assert bool((info.residual > 0).all())
    assert bool(((ratio > 0.1) & (ratio < 10)).all()), ratio  # the same order of magnitude


def _w_hat(w):
    w = w.copy()
    np.fill_diagonal(w, 0)
    d = w.sum(0)
    d[d == 0] = 1
    return w / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]


@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
def test_all_zero_columns_take_no_iteration(solver):
    graph = gp.symmetrize(random_directed(8, 30))
    y = torch.rand(30, 3, dtype=torch.float64)
    y[:, 1] = 0
    info = gp.label_propagation(graph, y, solver=solver, max_iter=20, return_info=True)
    assert int(info.iterations[1]) == 0 and bool((info.z[:, 1] == 0).all()) and float(info.residual[1]) == 0
    if solver != "direct":
        assert bool((info.iterations[[0, 2]] > 0).all())


@pytest.mark.parametrize("alpha", [np.float32(0.75), np.float64(0.75), torch.tensor(0.75),
                                   torch.tensor(0.75, dtype=torch.float64)])
def test_alpha_as_numpy_or_0d_tensor(alpha):
    graph = ring(6, 1.0)
    y = torch.rand(6, 2, dtype=torch.float64)
    expected = gp.label_propagation(graph, y, alpha=float(alpha))
    torch.testing.assert_close(gp.label_propagation(graph, y, alpha=alpha), expected)
    gp.label_propagation(graph, y, alpha=0.5, tol=np.float32(1e-4))


def test_alpha_tensor_of_many_values_is_refused():
    with pytest.raises(TypeError, match="alpha must be a number"):
        gp.label_propagation(ring(6, 1.0), torch.rand(6, 1, dtype=torch.float64), alpha=torch.tensor([0.5, 0.5]))


def test_row_count_kernel_equals_torch():
    gen = torch.Generator().manual_seed(0)
    z = torch.rand(500, 4, generator=gen, dtype=torch.float64) - 0.5
    bound = torch.tensor([0.3, 0.4, 0.2, 0.45], dtype=torch.float64)
    expected = int((z.abs() <= bound).all(dim=1).sum())
    assert expected > 0
    assert _propagation._count_rows_below(z, bound) == expected
    assert _propagation._count_rows_below(z.T.contiguous().T, bound) == expected  # the torch path


@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
def test_tiny_float32_scores(solver):
    graph = gp.symmetrize(random_directed(5, 40, 0.2)).to(dtype=torch.float32)
    y = torch.rand(40, 3, generator=torch.Generator().manual_seed(0))
    kw = {"solver": solver, "tol": 1e-6, "max_iter": 30}
    small = gp.label_propagation(graph, y * 2.0**-70, **kw)  # ||y||^2 underflows float32
    torch.testing.assert_close(small, gp.label_propagation(graph, y, **kw) * 2.0**-70, rtol=1e-6, atol=0)


def test_inference_mode_graphs_are_checked_every_call():
    with torch.inference_mode():
        graph = gp.symmetrize(random_directed(2, 30))
        y = torch.rand(30, 2, dtype=torch.float64)
        z = gp.label_propagation(graph, y, solver="cg", tol=1e-12, max_iter=200)
        graph.edge_weight[0] += 1.0  # in place, no version counter
        with pytest.raises(ValueError, match="symmetric"):
            gp.label_propagation(graph, y, solver="cg")
    np.testing.assert_allclose(z.numpy(), dense_propagation(gp.symmetrize(random_directed(2, 30)).to_dense().numpy(),
                                                            y.numpy(), 0.95), rtol=1e-8)


def test_cg_is_silent_below_one_percent_of_unresolved_rows(monkeypatch):
    graph, y = two_clusters()
    monkeypatch.setattr(_propagation, "UNRESOLVED_ROWS_WARN", 0.5)  # 10 of 20 is not more than half
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gp.label_propagation(graph, y, alpha=0.5, tol=1e-6, solver="cg")


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
def test_16_bit_graphs_are_solved_from_their_exact_float32_copy(half, solver):
    """A float16 / bfloat16 Graph or GridGraph (numba has no 16-bit floats) is solved as its
    float32 copy, which holds the same weights exactly: the same answer bit for bit, float32,
    against a dense float64 solve; its symmetry check works; 16-bit scores stay refused."""
    w = ring(30, 1.0, dtype=half)
    w = gp.Graph(w.edge_index, (torch.rand(60, generator=torch.Generator().manual_seed(0)) + 0.5).to(half), 30)
    w = gp.symmetrize(w)
    assert w.dtype == half and w.is_symmetric()
    y = torch.rand(30, 3, generator=torch.Generator().manual_seed(1))
    kw = {"alpha": 0.8, "solver": solver, "tol": 1e-7, "max_iter": 400}
    z = gp.label_propagation(w, y, **kw)
    assert z.dtype == torch.float32
    assert torch.equal(z, gp.label_propagation(w.to(dtype=torch.float32), y, **kw))
    dense = dense_propagation(w.to(dtype=torch.float64).to_dense().numpy(), y.double().numpy(), 0.8)
    np.testing.assert_allclose(z.numpy(), dense, rtol=1e-4, atol=1e-5)
    grid = gp.grid_graph(torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(2)).to(half), 1, 0.5)
    assert grid.dtype == half and grid.is_symmetric()
    yg = torch.rand(30, 2, generator=torch.Generator().manual_seed(3))
    wide = grid.to(dtype=torch.float32)
    assert torch.equal(gp.label_propagation(grid, yg, **kw), gp.label_propagation(wide, yg, **kw))
    with pytest.raises(TypeError, match="y must be float32 or float64"):
        gp.label_propagation(w, y.to(half), **kw)
