"""The compiled patch-stage path (CPU, numba): the LPOSS weights and the solver's W_hat built
straight from the similarity matrix (up to 4,096 nodes) or from the kNN lists (beyond), against
the torch / general graphprop construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import graphprop as gp
from segmentation import stages

SETTINGS = [(25, 3.0, 0.01, 1.0), (60, 3.0, 0.01, 1.0), (25, 1.5, 0.01, 1.0), (25, 3.0, 0.03, 1.4)]


def _inputs(n=300, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(n, d, generator=g), dim=1)
    return features, torch.rand(n, 2, generator=g) * 200


@pytest.mark.parametrize("gamma, sigma, pix_dist_pow", [(3.0, 0.01, 1.0), (1.5, 0.01, 1.0), (2.0, 0.03, 1.4)])
def test_patch_weights_equal_the_formula(gamma, sigma, pix_dist_pow):
    """max(s, 0)^gamma exp(-sigma d^p) per kNN entry, in float32: against float64 numpy (to
    float32 rounding) and the torch formula of patch_graph, at the published and other settings."""
    from segmentation._patch_kernels import patch_weights

    features, centers = _inputs()
    s = features @ features.T
    values, indices = s.topk(200, dim=1)  # far enough to reach negative similarities
    w = patch_weights(values.numpy(), indices.numpy(), centers.numpy(), gamma, sigma, pix_dist_pow)
    assert w.dtype == np.float32 and w.shape == (300, 200)
    c = centers.double().numpy()
    d = np.linalg.norm(c[:, None, :] - c[indices.numpy()], axis=2)
    expected = np.maximum(values.double().numpy(), 0) ** gamma * np.exp(-sigma * d ** pix_dist_pow)
    # float32 rounding of each step; exp(-x) turns an error of x into x times that, relative
    bound = 2 * np.finfo(np.float32).eps * (3 + gamma + 2 * sigma * d ** pix_dist_pow)
    assert (np.abs(w - expected) <= bound * expected + 1e-38).all()
    distance = (centers[:, None, :] - centers[indices]).norm(dim=2)
    torch_w = (values.clamp_min(0) ** gamma * torch.exp(-sigma * distance ** pix_dist_pow)).double().numpy()
    assert (np.abs(w - torch_w) <= 2 * bound * expected + 1e-38).all()
    assert (torch_w == 0).any() and (w == 0).any()  # negative similarities clamped


@pytest.fixture(params=["dense", "lists"])
def path(request, monkeypatch):
    """The CPU path of stages._solver_graph: from the whole similarity matrix, or from the kNN
    lists searched in blocks (as beyond _DENSE_SIMILARITIES)."""
    if request.param == "lists":
        monkeypatch.setattr(stages, "_DENSE_SIMILARITIES", 0)
    return request.param


@pytest.mark.parametrize("k, gamma, sigma, pix_dist_pow", SETTINGS + [(300, 3.0, 0.01, 1.0)])
def test_solver_graph_equals_the_general_construction(k, gamma, sigma, pix_dist_pow, path):
    """The compiled W_hat, on either path, has the edges of _normalized(patch_graph(...))
    without its zero entries (k = N reaches the negative similarities: zero weights) and the
    same values to float32 rounding of the weights, is marked symmetric, holds its CSR, and
    the published-settings graph differs from the others (every setting is used)."""
    features, centers = _inputs(seed=1)
    fast = stages._solver_graph(features, centers, k=k, gamma=gamma, sigma=sigma, pix_dist_pow=pix_dist_pow)
    indptr, columns, values = fast._receiver_csr()
    np.testing.assert_array_equal(np.repeat(np.arange(300), np.diff(indptr)), fast.edge_index[0].numpy())
    np.testing.assert_array_equal(columns, fast.edge_index[1].numpy())
    np.testing.assert_array_equal(values, fast.edge_weight.numpy())
    general = stages._normalized(stages.patch_graph(features, centers, k=k, gamma=gamma, sigma=sigma,
                                                  pix_dist_pow=pix_dist_pow))
    keep = general.edge_weight != 0
    assert torch.equal(fast.edge_index, general.edge_index[:, keep])
    torch.testing.assert_close(fast.edge_weight, general.edge_weight[keep], rtol=1e-5, atol=0)
    assert fast._derived["symmetric"][1] is True
    if (k, gamma, sigma, pix_dist_pow) != SETTINGS[0]:
        published = stages._solver_graph(features, centers, k=25, gamma=3.0, sigma=0.01, pix_dist_pow=1.0)
        assert not (published.num_edges == fast.num_edges and torch.equal(published.edge_weight, fast.edge_weight))


@pytest.mark.parametrize("k", [7, 25])
def test_solver_graph_paths_agree_bit_for_bit_with_ties(k, monkeypatch):
    """With exact duplicates among the features (ties at the k-th place: both paths keep the
    lowest indices, where torch.topk's choice is unspecified) the two CPU paths give the same
    W_hat bit for bit."""
    features, centers = _inputs()
    features[10:30] = features[0]
    features[50:53] = features[1]
    dense = stages._solver_graph(features, centers, k=k, gamma=3.0, sigma=0.01, pix_dist_pow=1.0)
    monkeypatch.setattr(stages, "_DENSE_SIMILARITIES", 0)
    lists = stages._solver_graph(features, centers, k=k, gamma=3.0, sigma=0.01, pix_dist_pow=1.0)
    assert torch.equal(dense.edge_index, lists.edge_index)
    assert torch.equal(dense.edge_weight, lists.edge_weight)


def test_solver_graph_with_duplicate_patches_and_k_capped(path):
    """Duplicate features (exact ties in the kNN) and k above N: the compiled graph equals the
    general one (the same tie choice does not matter for the set when k = N)."""
    features, centers = _inputs(n=50, seed=2)
    features = torch.cat([features, features])
    centers = torch.cat([centers, centers + 1])
    fast = stages._solver_graph(features, centers, k=400, gamma=3.0, sigma=0.01, pix_dist_pow=1.0)
    general = stages._normalized(stages.patch_graph(features, centers, k=400))
    keep = general.edge_weight != 0
    assert torch.equal(fast.edge_index, general.edge_index[:, keep])
    torch.testing.assert_close(fast.edge_weight, general.edge_weight[keep], rtol=1e-5, atol=0)
    y = torch.rand(100, 3, dtype=torch.float64)
    za = gp.label_propagation(fast, y, solver="cg", normalize=False, warn=False)
    zb = gp.label_propagation(general, y, solver="cg", normalize=False, warn=False)
    torch.testing.assert_close(za, zb, rtol=1e-5, atol=1e-9)


def test_patch_propagation_falls_back_to_the_general_path_without_numba(monkeypatch):
    """Where numba is missing (or off the CPU) the general construction runs: the same result."""
    features, centers = _inputs(n=120, seed=3)
    scores = torch.rand(120, 4)
    fast = stages.patch_propagation(features, scores, centers, k=20)
    monkeypatch.setattr(stages, "numba_available", lambda: False)
    general = stages.patch_propagation(features, scores, centers, k=20)
    torch.testing.assert_close(fast, general, rtol=1e-5, atol=1e-7)
