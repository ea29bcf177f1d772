"""graphprop against its peers on their own data: scikit-learn's digits examples
(``plot_label_propagation_digits`` and its active-learning twin) and Zachary's karate
club from networkx, solved by sklearn's ``LabelSpreading`` and PyG's
``LabelPropagation``. Our tests, written from what those projects check."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warnings

import numpy as np
import pytest
import torch

import graphprop as gp

sklearn = pytest.importorskip("sklearn")
from sklearn.metrics.pairwise import rbf_kernel  # noqa: E402  (after the importorskip)
from sklearn.semi_supervised import LabelSpreading  # noqa: E402


def digits(n: int):
    """sklearn's digits example: the first ``n`` samples after ``RandomState(2)``'s shuffle."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.arange(len(data.data))
    np.random.RandomState(2).shuffle(order)
    return data.data[order[:n]], data.target[order[:n]]


def one_hot(labels: np.ndarray, known: np.ndarray, classes: int) -> torch.Tensor:
    y = torch.zeros(len(labels), classes, dtype=torch.float64)
    y[torch.from_numpy(known), torch.from_numpy(labels[known])] = 1
    return y


def distributions(z: torch.Tensor) -> np.ndarray:
    """sklearn's ``label_distributions_``: rows normalised to sum 1 (zero rows kept)."""
    z = z.double().numpy()
    s = z.sum(1, keepdims=True)
    return z / np.where(s == 0, 1, s)


@pytest.fixture(scope="module")
def digits_case():
    x, target = digits(340)
    partial = target.copy()
    partial[40:] = -1
    graph = gp.Graph.from_dense(torch.from_numpy(rbf_kernel(x, x, gamma=0.25)))
    converged = LabelSpreading(gamma=0.25, alpha=0.2, max_iter=100_000, tol=1e-15).fit(x, partial)
    return x, target, partial, graph, one_hot(target, np.arange(40), 10), converged


def test_digits_default_call_gives_sklearns_labels(digits_case):
    _, target, _, graph, y, converged = digits_case
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing
        z = gp.label_propagation(graph, y, alpha=0.2)  # every other setting at its default
    labels = z.argmax(1).numpy()
    assert (labels == converged.transduction_).mean() >= 0.99
    np.testing.assert_allclose(distributions(z), converged.label_distributions_, rtol=1e-9, atol=1e-12)
    assert (labels[40:] == target[40:]).mean() == pytest.approx((converged.transduction_[40:] == target[40:]).mean())


def test_digits_float32_scores_give_sklearns_labels(digits_case):
    """Z's dtype is y's promoted with the graph's: float32 scores on the float64 digits
    graph give the float64 answer itself. Cast to float32 it would lose 62 rows below
    float32's smallest number (all zero: 81.8% of sklearn's labels)."""
    _, _, _, graph, y, converged = digits_case
    z64 = gp.label_propagation(graph, y, alpha=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing
        z32 = gp.label_propagation(graph, y.float(), alpha=0.2)  # the default call, float32 scores
    assert z32.dtype == torch.float64 and torch.equal(z32, z64)
    assert (z32.argmax(1).numpy() == converged.transduction_).mean() >= 0.99
    assert (z64.float().argmax(1).numpy() == converged.transduction_).mean() < 0.99  # what a cast loses


def test_digits_cg_warns_that_it_did_not_resolve_the_rows(digits_case):
    _, _, _, graph, y, converged = digits_case
    with pytest.warns(gp.ConvergenceWarning, match="below the residual CG stopped at"):
        z = gp.label_propagation(graph, y, alpha=0.2, solver="cg")
    assert (z.argmax(1).numpy() == converged.transduction_).mean() < 0.99  # the warned-of failure


def test_digits_fixed_point_for_sklearns_iterations_reproduces_sklearn(digits_case):
    x, _, partial, graph, y, _ = digits_case
    example = LabelSpreading(gamma=0.25, max_iter=20).fit(x, partial)  # the example's settings, alpha 0.2
    z = gp.label_propagation(graph, y, alpha=0.2, tol=0.0, max_iter=example.n_iter_, solver="fixed_point")
    np.testing.assert_allclose(distributions(z), example.label_distributions_, rtol=1e-12, atol=1e-15)


def test_digits_active_learning_picks_sklearns_points():
    """The active-learning example: 10 labels, then 4 rounds adding the 5 points whose
    label distribution has the largest entropy; converged solves on both sides."""
    from scipy.stats import entropy

    x, target = digits(330)
    graph = gp.Graph.from_dense(torch.from_numpy(rbf_kernel(x, x, gamma=0.25)))
    known = np.arange(10)
    for _ in range(4):
        partial = np.full(330, -1)
        partial[known] = target[known]
        model = LabelSpreading(gamma=0.25, max_iter=100_000, tol=1e-15).fit(x, partial)
        classes = model.classes_
        y = torch.zeros(330, len(classes), dtype=torch.float64)
        y[torch.from_numpy(known), torch.from_numpy(np.searchsorted(classes, target[known]))] = 1
        ours = distributions(gp.label_propagation(graph, y, alpha=0.2))
        np.testing.assert_allclose(ours, model.label_distributions_, rtol=1e-5, atol=1e-9)  # LU: absolute accuracy
        ent_ours, ent_sk = entropy(ours.T), entropy(model.label_distributions_.T)
        chosen = _most_uncertain(ent_sk, known)
        # the same points, up to ties between duplicate samples (equal entropies)
        np.testing.assert_allclose(ent_ours[_most_uncertain(ent_ours, known)], ent_sk[chosen], rtol=1e-6)
        known = np.concatenate([known, chosen])


def _most_uncertain(ent: np.ndarray, known: np.ndarray) -> list:
    """The active-learning example's pick: the 5 unlabelled points of largest entropy."""
    return [i for i in np.argsort(ent)[::-1] if i not in known][:5]


# --------------------------------------------------------------------- karate club
@pytest.fixture(scope="module")
def karate():
    nx = pytest.importorskip("networkx")
    g = nx.karate_club_graph()
    w = nx.to_numpy_array(g, weight="weight")
    clubs = np.array([g.nodes[i]["club"] == "Officer" for i in range(34)], dtype=np.int64)
    return w, clubs


@pytest.mark.parametrize("solver", ["auto", "cg", "fixed_point", "direct"])
def test_karate_club_equals_sklearn(karate, solver):
    w, clubs = karate
    partial = np.full(34, -1)
    partial[[0, 33]] = clubs[[0, 33]]
    model = LabelSpreading(kernel=lambda a, b: w, alpha=0.5, max_iter=100_000, tol=1e-15)
    model.fit(np.arange(34.0)[:, None], partial)
    y = one_hot(clubs, np.array([0, 33]), 2)
    z = gp.label_propagation(gp.Graph.from_dense(torch.from_numpy(w)), y, alpha=0.5, solver=solver, tol=1e-13,
                             max_iter=500)
    np.testing.assert_allclose(distributions(z), model.label_distributions_, rtol=1e-9, atol=1e-12)
    assert (z.argmax(1).numpy() == clubs).mean() > 0.9


def test_karate_club_equals_pyg(karate):
    from torch_geometric.nn import LabelPropagation

    w, clubs = karate
    graph = gp.Graph.from_dense(torch.from_numpy(w))
    mask = torch.zeros(34, dtype=torch.bool)
    mask[[0, 33]] = True
    labels = torch.from_numpy(clubs)
    prop = LabelPropagation(num_layers=200, alpha=0.5)
    pyg = prop(labels, graph.edge_index, mask=mask, edge_weight=None)  # unweighted, PyG's defaults
    ours = gp.label_propagation(gp.Graph(graph.edge_index, torch.ones(graph.num_edges, dtype=torch.float64), 34),
                                one_hot(clubs, np.array([0, 33]), 2), alpha=0.5)
    torch.testing.assert_close((ours * 0.5).float(), pyg, rtol=1e-5, atol=1e-6)
    ei, ew = _gcn(graph)
    # gcn_norm's weights
    weighted = prop(labels.view(-1, 1).eq(torch.arange(2)).double(), ei, mask=mask, edge_weight=ew)
    ours = gp.label_propagation(graph, one_hot(clubs, np.array([0, 33]), 2), alpha=0.5)
    torch.testing.assert_close(ours * 0.5, weighted.double(), rtol=1e-9, atol=1e-12)


def _gcn(graph):
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    return gcn_norm(graph.edge_index, graph.edge_weight, graph.num_nodes, add_self_loops=False)


# ----------------------------------------------------- sklearn on a directed graph
def test_sklearn_convention_on_a_directed_graph():
    """sklearn aggregates along W's rows (``S @ F``) with column-sum degrees; the
    recipe of docs/graphprop.md gets it: ``normalize=False`` on
    ``sym_normalize(remove_self_loops(W^T))``."""
    gen = torch.Generator().manual_seed(0)
    w = (torch.rand(30, 30, generator=gen, dtype=torch.float64) + 0.01) * (torch.rand(30, 30, generator=gen) < 0.4)
    w = w.numpy()
    partial = np.full(30, -1)
    partial[:6] = [0, 1, 2, 0, 1, 2]
    model = LabelSpreading(kernel=lambda a, b: w, alpha=0.6, max_iter=100_000, tol=1e-15)
    model.fit(np.arange(30.0)[:, None], partial)
    graph = gp.Graph.from_dense(torch.from_numpy(w))
    s_graph = gp.sym_normalize(gp.remove_self_loops(gp.Graph(graph.edge_index.flip(0), graph.edge_weight, 30)))
    y = one_hot(np.array([0, 1, 2, 0, 1, 2] + [0] * 24), np.arange(6), 3)
    z = gp.label_propagation(s_graph, y, alpha=0.6, normalize=False, solver="direct")
    np.testing.assert_allclose(distributions(z), model.label_distributions_, rtol=1e-9, atol=1e-12)
