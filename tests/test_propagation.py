"""label_propagation against independent computations: dense solves, scipy's CG,
PyG's LabelPropagation and scikit-learn's LabelSpreading."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import scipy.sparse.linalg as spl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphprop as gp
from graphprop import _propagation

SETTINGS = settings(max_examples=25, deadline=None)


def random_graph(seed: int, n: int, density: float = 0.3, dtype=torch.float64) -> gp.Graph:
    """A symmetric non-negative graph with self-loops, isolated nodes possible."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, n, generator=g, dtype=dtype) * (torch.rand(n, n, generator=g) < density)
    return gp.Graph.from_dense(w + w.T)


def dense_w_hat(graph: gp.Graph) -> np.ndarray:
    """D^-1/2 W D^-1/2 of W without its diagonal, zero degree counted as 1 (numpy)."""
    w = graph.to_dense().double().numpy().copy()
    np.fill_diagonal(w, 0)
    d = w.sum(1)
    d[d == 0] = 1
    s = 1 / np.sqrt(d)
    return s[:, None] * w * s[None, :]


def dense_solution(graph: gp.Graph, y: torch.Tensor, alpha: float) -> np.ndarray:
    a = np.eye(graph.num_nodes) - alpha * dense_w_hat(graph)
    return np.linalg.solve(a, y.double().numpy())


graphs = st.builds(
    lambda seed, n, density: (random_graph(seed, n, density), seed),
    st.integers(0, 10_000),
    st.integers(2, 40),
    st.floats(0.05, 0.9),
)


@SETTINGS
@given(graphs, st.integers(1, 6), st.floats(0.05, 0.99))
def test_cg_to_convergence_equals_dense_solve(graph_seed, e, alpha):
    graph, seed = graph_seed
    y = torch.rand(graph.num_nodes, e, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = gp.label_propagation(graph, y, alpha=alpha, tol=1e-13, max_iter=2000, solver="cg")
    np.testing.assert_allclose(z.numpy(), dense_solution(graph, y, alpha), rtol=1e-8, atol=1e-9)


@SETTINGS
@given(graphs, st.integers(1, 5), st.integers(1, 12), st.sampled_from([1e-6, 1e-3, 0.1]))
def test_cg_equals_scipy_cg_per_column(graph_seed, e, max_iter, tol):
    graph, seed = graph_seed
    gen = torch.Generator().manual_seed(seed)
    # columns of very different scale and smoothness converge at different iterations
    y = torch.rand(graph.num_nodes, e, generator=gen, dtype=torch.float64) ** torch.arange(1, e + 1)
    info = gp.label_propagation(graph, y, alpha=0.95, tol=tol, max_iter=max_iter, solver="cg", return_info=True,
                                warn=False)  # stops early by design: the unresolved-rows warning is not the point
    a = np.eye(graph.num_nodes) - 0.95 * dense_w_hat(graph)
    for c in range(e):
        steps = []
        ref, _ = spl.cg(a, y[:, c].numpy(), rtol=tol, atol=0.0, maxiter=max_iter, callback=steps.append)
        np.testing.assert_allclose(info.z[:, c].numpy(), ref, rtol=1e-9, atol=1e-12)
        assert int(info.iterations[c]) == len(steps)


def test_cg_published_setting_float32_matches_float64_scipy():
    graph = random_graph(3, 300, 0.05, dtype=torch.float32)
    y = torch.rand(300, 46, generator=torch.Generator().manual_seed(1))
    z = gp.label_propagation(graph, y, solver="cg")  # alpha 0.95, tol 1e-6, 10 iterations
    assert z.dtype == torch.float32
    a = np.eye(300) - 0.95 * dense_w_hat(graph)
    ref = np.stack([spl.cg(a, y[:, c].double().numpy(), rtol=1e-6, maxiter=10)[0] for c in range(46)], 1)
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_batched_cg_equals_cg_per_column():
    graph = random_graph(5, 60, 0.2)
    y = torch.rand(60, 7, dtype=torch.float64) * torch.logspace(-3, 3, 7, dtype=torch.float64)
    y[:, 3] = 0  # an all-zero column stays zero and takes no iteration
    batched = gp.label_propagation(graph, y, tol=1e-4, max_iter=30, solver="cg", return_info=True)
    for c in range(7):
        one = gp.label_propagation(graph, y[:, c], tol=1e-4, max_iter=30, solver="cg", return_info=True)
        torch.testing.assert_close(batched.z[:, c], one.z, rtol=1e-12, atol=1e-14)
        assert batched.iterations[c] == one.iterations[0]
    assert batched.iterations[3] == 0 and torch.all(batched.z[:, 3] == 0)


@SETTINGS
@given(graphs, st.integers(1, 15), st.floats(0.1, 0.99))
def test_fixed_point_equals_pyg_label_propagation(graph_seed, steps, alpha):
    from torch_geometric.nn import LabelPropagation
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    graph, seed = graph_seed
    graph = gp.remove_self_loops(graph)
    y = torch.rand(graph.num_nodes, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ours = gp.label_propagation(graph, y, alpha=alpha, tol=0.0, max_iter=steps, solver="fixed_point")
    # PyG's own weighted symmetric normalisation, then its propagation without clamping
    ei, ew = gcn_norm(graph.edge_index, graph.edge_weight, graph.num_nodes, add_self_loops=False)
    pyg = LabelPropagation(num_layers=steps, alpha=alpha)(y, ei, edge_weight=ew, post_step=lambda t: t)
    torch.testing.assert_close(ours * (1 - alpha), pyg, rtol=1e-10, atol=1e-12)


def test_fixed_point_converges_to_the_cg_solution():
    graph = random_graph(11, 50, 0.2)
    y = torch.rand(50, 4, dtype=torch.float64)
    info = gp.label_propagation(graph, y, solver="fixed_point", tol=1e-10, max_iter=5000, return_info=True)
    assert bool(info.converged.all()) and info.max_iterations < 5000
    np.testing.assert_allclose(info.z.numpy(), dense_solution(graph, y, 0.95), rtol=1e-7, atol=1e-8)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 1000), st.floats(0.2, 0.95))
def test_converged_distributions_equal_sklearn_label_spreading(seed, alpha):
    from sklearn.semi_supervised import LabelSpreading

    n = 40
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(n, n, generator=gen, dtype=torch.float64) + 0.01  # connected
    w = (w + w.T).numpy()
    labels = np.full(n, -1)
    labels[:6] = [0, 1, 2, 0, 1, 2]
    model = LabelSpreading(kernel=lambda a, b: w, alpha=alpha, max_iter=100_000, tol=1e-13)
    model.fit(np.arange(n, dtype=float)[:, None], labels)
    y = torch.zeros(n, 3, dtype=torch.float64)
    y[torch.arange(6), torch.tensor(labels[:6])] = 1
    z = gp.label_propagation(gp.Graph.from_dense(torch.from_numpy(w)), y, alpha=alpha, tol=1e-14, max_iter=1000)
    ours = (z / z.sum(1, keepdim=True)).numpy()
    np.testing.assert_allclose(ours, model.label_distributions_, rtol=1e-7, atol=1e-9)


@SETTINGS
@given(graphs, st.sampled_from(["cg", "fixed_point", "direct"]))
def test_relabelling_nodes_permutes_the_output(graph_seed, solver):
    graph, seed = graph_seed
    n = graph.num_nodes
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    permuted = gp.Graph(inverse[graph.edge_index], graph.edge_weight, n)  # node i -> inverse[i]
    y = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    kw = dict(solver=solver, tol=1e-12, max_iter=400)
    z = gp.label_propagation(graph, y, **kw)
    zp = gp.label_propagation(permuted, y[perm], **kw)
    torch.testing.assert_close(zp, z[perm], rtol=1e-8, atol=1e-10)


@SETTINGS
@given(graphs, st.floats(-3, 3), st.floats(-3, 3), st.sampled_from(["cg", "fixed_point", "direct"]))
def test_linear_in_y(graph_seed, a, b, solver):
    graph, seed = graph_seed
    gen = torch.Generator().manual_seed(seed)
    y1 = torch.rand(graph.num_nodes, 2, generator=gen, dtype=torch.float64)
    y2 = torch.rand(graph.num_nodes, 2, generator=gen, dtype=torch.float64)
    # CG's iterates depend on Y nonlinearly: compare it converged; the others at any step
    kw = dict(tol=1e-13, max_iter=2000) if solver == "cg" else dict(tol=0.0, max_iter=7)
    f = lambda y: gp.label_propagation(graph, y, solver=solver, **kw)  # noqa: E731
    torch.testing.assert_close(f(a * y1 + b * y2), a * f(y1) + b * f(y2), rtol=1e-7, atol=1e-8)


def test_all_graph_forms_agree():
    graph = random_graph(2, 30, 0.3)
    y = torch.rand(30, 3, dtype=torch.float64)
    ref = gp.label_propagation(graph, y)
    for form in (graph.to_sparse_coo(), graph.to_sparse_csr(), graph.to_sparse_coo().to_sparse_csc()):
        torch.testing.assert_close(gp.label_propagation(form, y), ref)
    # 1-D y in, 1-D out
    torch.testing.assert_close(gp.label_propagation(graph, y[:, 0]), ref[:, 0])


def test_isolated_nodes_keep_their_scores():
    w = torch.zeros(4, 4, dtype=torch.float64)
    w[0, 1] = w[1, 0] = 1.0
    y = torch.rand(4, 2, dtype=torch.float64)
    z = gp.label_propagation(gp.Graph.from_dense(w), y, solver="direct")
    torch.testing.assert_close(z[2:], y[2:])


def test_normalize_false_uses_the_graph_as_w_hat():
    graph = random_graph(4, 20, 0.4)
    w_hat = gp.sym_normalize(gp.remove_self_loops(graph))
    y = torch.rand(20, 2, dtype=torch.float64)
    torch.testing.assert_close(
        gp.label_propagation(w_hat, y, normalize=False, solver="direct"),
        gp.label_propagation(graph, y, solver="direct"),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
def test_outputs_follow_dtype_and_device(dtype, solver):
    graph = random_graph(6, 25, 0.3, dtype=torch.float32)
    y = torch.rand(25, 3, dtype=dtype)
    z = gp.label_propagation(graph, y, solver=solver)
    assert z.dtype == dtype and z.device == y.device and z.shape == y.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("solver", ["cg", "fixed_point", "direct"])
def test_cuda_equals_cpu(solver):  # pragma: no cover - needs a GPU
    graph = random_graph(6, 50, 0.3)
    y = torch.rand(50, 3, dtype=torch.float64)
    z = gp.label_propagation(graph.to("cuda"), y.cuda(), solver=solver)
    assert z.device.type == "cuda"
    torch.testing.assert_close(z.cpu(), gp.label_propagation(graph, y, solver=solver))


def test_info_and_convergence_warning():
    graph = random_graph(8, 80, 0.1)
    y = torch.rand(80, 3, dtype=torch.float64)
    info = gp.label_propagation(graph, y, max_iter=2, tol=1e-12, solver="cg", return_info=True)
    assert isinstance(info, gp.PropagationResult)
    assert info.solver == "cg" and info.iterations.tolist() == [2, 2, 2]
    assert not bool(info.converged.any()) and bool((info.residual > 1e-12).all())
    with pytest.warns(gp.ConvergenceWarning, match="max_iter=2"):
        gp.label_propagation(graph, y, max_iter=2, tol=1e-12, solver="cg", warn=True)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gp.label_propagation(graph, y, max_iter=2, tol=1e-12, solver="cg")  # warn is off by default
    assert not [w for w in caught if "max_iter=" in str(w.message)]
    done = gp.label_propagation(graph, y, max_iter=500, tol=1e-10, solver="cg", return_info=True)
    assert bool(done.converged.all()) and bool((done.residual <= 1e-10).all())


def test_bad_inputs_name_the_argument(monkeypatch):
    graph = random_graph(9, 10, 0.5)
    y = torch.rand(10, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="y must have one row per node"):
        gp.label_propagation(graph, torch.rand(9, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="y contains NaN"):
        gp.label_propagation(graph, torch.full((10, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(TypeError, match="y must be float32 or float64"):
        gp.label_propagation(graph, torch.ones(10, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match="negative"):
        gp.label_propagation(gp.Graph(graph.edge_index, -graph.edge_weight, 10), y)
    with pytest.raises(ValueError, match="empty"):
        gp.label_propagation(gp.Graph(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), 0), torch.zeros(0, 1))
    with pytest.raises(TypeError, match="graph must be"):
        gp.label_propagation(graph.to_dense(), y)
    with pytest.raises(TypeError, match="graph must be"):
        gp.label_propagation("graph", y)
    with pytest.raises(ValueError, match="alpha"):
        gp.label_propagation(graph, y, alpha=1.0)
    with pytest.raises(ValueError, match="solver"):
        gp.label_propagation(graph, y, solver="jacobi")
    with pytest.raises(ValueError, match="max_iter"):
        gp.label_propagation(graph, y, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        gp.label_propagation(graph, y, tol=-1.0)
    for flag, value, words in (("normalize", "no", "normalize must be True or False, got str 'no'"),
                               ("return_info", 1, "return_info must be True or False, got int 1"),
                               ("warn", "always", "warn must be True, False or None, got str 'always'")):
        with pytest.raises(TypeError, match=words):
            gp.label_propagation(graph, y, **{flag: value})
    assert isinstance(gp.label_propagation(graph, y, warn=None, return_info=np.True_), _propagation.PropagationResult)
    directed = gp.Graph(torch.tensor([[0], [1]]), torch.tensor([1.0], dtype=torch.float64), 10)
    with pytest.raises(ValueError, match="symmetric"):
        gp.label_propagation(directed, y, solver="cg")
    gp.label_propagation(directed, y, solver="fixed_point")  # fine without symmetry
    monkeypatch.setattr(_propagation, "DIRECT_MAX_NODES", 5)
    with pytest.raises(ValueError, match="N <= 5"):
        gp.label_propagation(graph, y, solver="direct")


# ------------------------------------------------------------------ solver table
def test_solver_table_lists_every_solver():
    assert _propagation.SOLVERS == ("auto", *_propagation.SOLVER_TABLE)
    assert set(_propagation.SOLVER_TABLE) == {"cg", "fixed_point", "direct"}
    assert _propagation.SOLVER_TABLE["cg"].needs_symmetric
    assert not _propagation.SOLVER_TABLE["fixed_point"].needs_symmetric
    assert _propagation.SOLVER_TABLE["direct"].dtype == torch.float64


def test_a_new_solver_is_one_table_entry(monkeypatch):
    """A Neumann-series solver ``Z = sum_t (alpha P)^t Y``, registered by one entry:
    label_propagation validates the name, builds the operator and reports it."""
    seen = {}

    def neumann(p, y, alpha, tol, max_iter):
        seen["dtype"] = y.dtype
        z, term = y.clone(), y.clone()
        for _ in range(max_iter):
            term = alpha * p(term)
            z += term
        iters = torch.full((y.size(1),), max_iter, dtype=torch.long)
        return z, iters, (y - z + alpha * p(z)).norm(dim=0) / y.norm(dim=0)

    monkeypatch.setitem(_propagation.SOLVER_TABLE, "neumann",
                        _propagation.SolverSpec(neumann, needs_symmetric=True, dtype=torch.float64))
    graph = random_graph(4, 30, dtype=torch.float32)  # Z float32: the entry asks for float64 work
    y = torch.rand(30, 2)
    info = gp.label_propagation(graph, y, alpha=0.5, solver="neumann", max_iter=80, return_info=True)
    assert info.solver == "neumann" and seen["dtype"] == torch.float64 and info.z.dtype == torch.float32
    torch.testing.assert_close(info.z, gp.label_propagation(graph, y, alpha=0.5, solver="direct"), rtol=1e-6, atol=1e-6)
    directed = gp.Graph(torch.tensor([[0], [1]]), torch.tensor([1.0], dtype=torch.float64), 30)
    with pytest.raises(ValueError, match="symmetric .*solver='neumann'"):  # what the entry says it needs
        gp.label_propagation(directed, y, solver="neumann")
    monkeypatch.delitem(_propagation.SOLVER_TABLE, "neumann")
    with pytest.raises(ValueError, match="solver must be one of"):
        gp.label_propagation(graph, y, solver="neumann")
