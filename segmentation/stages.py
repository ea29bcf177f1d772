"""The stages of LPOSS / LPOSS+, as plain tensor functions on ``graphprop``.

- :func:`patch_centers` (``docs/method.md`` §6): the pixel centres of the patches of all windows.
- :func:`patch_propagation` (§6): a kNN graph over the patches of all windows, weights from VM
  feature similarity and patch distance, label propagation of the VLM scores.
- :func:`pixel_propagation` (§7): a 13 x 13-window graph over the pixels with Lab colour weights,
  label propagation of the patch-stage scores at pixel resolution.
- :func:`merge_windows`: per-window score maps resized onto the image and averaged.

The public functions check their arguments once (:mod:`segmentation.config`'s rules);
:class:`~segmentation.pipeline.LPOSS`, whose :class:`~segmentation.config.LPOSSConfig` was checked
on construction, calls the unchecked ``_patch_stage`` / ``_pixel_stage`` they share. Outputs follow
the inputs' device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import graphprop as gp
from graphprop._stencil import numba_available
from graphprop._validation import check_tensor

from .color import LAB_SCALE, rgb_to_lab
from .config import LPOSS_CONSTRAINTS, PATCH_GRAPH_CONSTRAINTS, PropagationSettings, check_settings

__all__ = ["merge_windows", "patch_centers", "patch_graph", "patch_propagation", "pixel_propagation"]


def patch_centers(boxes: Sequence[tuple[int, int, int, int]], grid: tuple[int, int], patch_size: int, *,
                  device: torch.device | str | None = None) -> Tensor:
    """The pixel centres of the patches of every window, in the order the patch stage takes them.

    The patch in row ``r``, column ``c`` of window ``(y1, y2, x1, x2)`` is centred at
    ``(y1 + p // 2 + p * r, x1 + p // 2 + p * c)``, ``p`` the VM's patch size (§6).

    Parameters
    ----------
    boxes : n windows ``(y1, y2, x1, x2)`` in working-size pixels
    grid : (gh, gw), the patch grid of every window
    patch_size : p, the VM's patch size in pixels
    device : where the result lives (default the CPU)

    Returns
    -------
    (n * gh * gw, 2) float32 tensor of (y, x): window by window, then row-major over the grid
    (the order of ``vm_features.reshape(n * gh * gw, D)``).
    """
    if not boxes:
        return torch.empty(0, 2, device=device)
    gh, gw = grid
    p = patch_size
    rows = torch.arange(gh, device=device, dtype=torch.float32)
    cols = torch.arange(gw, device=device, dtype=torch.float32)
    return torch.cat([
        torch.stack(torch.meshgrid(y1 + p // 2 + p * rows, x1 + p // 2 + p * cols, indexing="ij"),
                    -1).reshape(-1, 2)
        for y1, _, x1, _ in boxes
    ])


def patch_propagation(
    features: Tensor,
    scores: Tensor,
    centers: Tensor,
    *,
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    pix_dist_pow: float = 1.0,
    alpha: float = 0.95,
    tol: float = 1e-6,
    max_iter: int = 10,
) -> Tensor:
    """LPOSS: propagate patch scores over the kNN graph of VM features (§6).

    Each patch is joined to its ``k`` nearest patches by inner product (itself included; ``k`` is
    capped at N) with weight ``max(s, 0) ** gamma * exp(-sigma * d ** pix_dist_pow)``, ``d`` the
    distance of the patch centres in pixels; ``W + W^T``; self-loops dropped;
    ``D^-1/2 W D^-1/2``; then ``(I - alpha W_hat) Z = Y`` by conjugate gradient, all columns at
    once with per-column stopping (equal to one CG per column). Weights are computed in float32
    from the features, as published, and the solve runs in float64, as published.

    Parameters
    ----------
    features : (N, D) float tensor, L2-normalised VM patch features
    scores : (N, E) float tensor, initial scores (one column per text embedding)
    centers : (N, 2) float tensor, patch centres (y, x) in pixels (:func:`patch_centers`)
    k, gamma, sigma, pix_dist_pow : the patch graph's settings (published 400, 3.0, 0.01, 1.0)
    alpha, tol, max_iter : the solve's settings (published 0.95, 1e-6, 10), a
        :class:`~segmentation.config.PropagationSettings`

    Returns
    -------
    (N, E) tensor in ``scores``' dtype, on its device.

    Raises
    ------
    TypeError
        A setting of the wrong type (``k=2.5``).
    ValueError
        Shapes that do not fit, or a setting out of range (``alpha=1.0``).
    """
    if features.ndim != 2 or scores.ndim != 2 or centers.ndim != 2 or centers.shape[1] != 2:
        raise ValueError(
            f"expected features (N, D), scores (N, E) and centers (N, 2), got {tuple(features.shape)}, "
            f"{tuple(scores.shape)} and {tuple(centers.shape)}"
        )
    n = features.shape[0]
    if scores.shape[0] != n or centers.shape[0] != n:
        raise ValueError(f"features, scores and centers must have the same N, got {n}, {scores.shape[0]}, "
                         f"{centers.shape[0]}")
    check_settings({"k": k, "gamma": gamma, "sigma": sigma, "pix_dist_pow": pix_dist_pow}, PATCH_GRAPH_CONSTRAINTS)
    settings = PropagationSettings(alpha=alpha, tol=tol, max_iter=max_iter)
    return _patch_stage(features, scores, centers, k=k, gamma=gamma, sigma=sigma, pix_dist_pow=pix_dist_pow,
                        settings=settings)


def _patch_stage(features: Tensor, scores: Tensor, centers: Tensor, *, k: int, gamma: float, sigma: float,
                 pix_dist_pow: float, settings: PropagationSettings) -> Tensor:
    """:func:`patch_propagation` on arguments already checked: (N, D), (N, E), (N, 2) -> (N, E)."""
    w_hat = _solver_graph(features, centers, k=k, gamma=gamma, sigma=sigma, pix_dist_pow=pix_dist_pow)
    z = _solve(w_hat, scores.to(w_hat.device, torch.float64), settings, normalize=False)
    return z.to(device=scores.device, dtype=scores.dtype)


def _solve(graph: gp.Graph | gp.GridGraph, y: Tensor, settings: PropagationSettings, *,
           normalize: bool = True) -> Tensor:
    """Both stages' solve of ``(I - alpha W_hat) Z = Y``: (N, E) -> (N, E), by CG as published,
    stopping at ``max_iter`` silently (the published stages stop there by design)."""
    return gp.label_propagation(graph, y, alpha=settings.alpha, tol=settings.tol, max_iter=settings.max_iter,
                                solver="cg", normalize=normalize, warn=False)


# Up to this many similarities (N^2; 64 MiB of float32) the CPU patch graph is built from the
# whole (N, N) matrix at once; beyond, from the kNN lists searched in blocks.
_DENSE_SIMILARITIES = 1 << 24


def _solver_graph(features: Tensor, centers: Tensor, *, k: int, gamma: float, sigma: float,
                  pix_dist_pow: float) -> gp.Graph:
    """The float64 ``W_hat`` the solver reads: ``_normalized(patch_graph(...))``.

    On the CPU (numba) in compiled passes instead, the same numbers to float rounding (the
    weights' pow and exp are float32 ``powf``/``expf`` rather than torch's):

    - up to ``_DENSE_SIMILARITIES`` similarities (N <= 4,096): the (N, N) inner products as
      an exactly symmetric Gram matrix (:func:`graphprop._blas.inner_products`), each row's
      top k by partial selection, then ``W + W^T`` normalised straight from the matrix, one
      pass per row over the union of its neighbours and the nodes that have it as theirs
      (:func:`segmentation._patch_kernels.normalized_patch_graph`);
    - beyond: the kNN lists searched in blocks, the weights of the lists, then ``W + W^T``
      normalised from the lists (``graphprop._knn._normalized_symmetric_graph``).

    Neither builds an edge list of W, sorts, or checks symmetry (symmetric by construction);
    zero entries are dropped.

    Parameters
    ----------
    features : (N, D) float tensor, L2-normalised VM patch features
    centers : (N, 2) float tensor, patch centres (y, x) in pixels
    k, gamma, sigma, pix_dist_pow : as in :func:`patch_propagation`

    Returns
    -------
    Graph
        (N, N) float64 ``W_hat``, edges sorted by (source, target).
    """
    if features.device.type != "cpu" or not numba_available():
        return _normalized(patch_graph(features, centers, k=k, gamma=gamma, sigma=sigma, pix_dist_pow=pix_dist_pow))
    from graphprop._knn import _normalized_symmetric_graph, _search, _symmetric_csr_graph

    from ._patch_kernels import normalized_patch_graph, patch_weights

    features = check_tensor("features", features.detach().float(), dims=("N", "D"), floating=True, finite=True,
                            nonempty=True).contiguous()
    n = features.shape[0]
    k = min(k, n)
    where = centers.detach().to("cpu", torch.float32).contiguous().numpy()
    if n * n <= _DENSE_SIMILARITIES:
        from graphprop._blas import inner_products
        from graphprop._knn_kernels import select_topk

        x = features.numpy()
        sims = inner_products(x, x, gram=True)
        _, neighbours = select_topk(sims, k)
        return _symmetric_csr_graph(*normalized_patch_graph(sims, neighbours, where, gamma, sigma, pix_dist_pow))
    values, indices = _search(features, k, None, "ip", "auto", ordered=False, selection=True)
    weights = patch_weights(values.numpy(), indices.numpy(), where, gamma, sigma, pix_dist_pow)
    return _normalized_symmetric_graph(indices, torch.from_numpy(weights))


def _normalized(graph: gp.Graph) -> gp.Graph:
    """``W_hat = D^-1/2 W D^-1/2`` of ``graph`` without its self-loops, in float64 (§6).

    What ``label_propagation(graph.to(dtype=torch.float64))`` normalises to. On the CPU one
    compiled pass over the edges, which :func:`patch_graph` gives sorted by (source, target).

    Parameters
    ----------
    graph : :class:`graphprop.Graph` of N nodes, edges sorted by (source, target)

    Returns
    -------
    :class:`graphprop.Graph` of N nodes, float64 weights, no self-loops.
    """
    if graph.device.type != "cpu" or not numba_available():
        return gp.sym_normalize(gp.remove_self_loops(graph.to(dtype=torch.float64)))
    from graphprop._knn_kernels import normalized_without_self_loops

    n = graph.num_nodes
    crow = torch.zeros(n + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(graph.edge_index[0], minlength=n), 0, out=crow[1:])
    edges, val = normalized_without_self_loops(crow.numpy(), graph.edge_index[1].numpy(), graph.edge_weight.numpy())
    return gp.Graph(torch.from_numpy(edges), torch.from_numpy(val), n)


def patch_graph(features: Tensor, centers: Tensor, *, k: int = 400, gamma: float = 3.0, sigma: float = 0.01,
                pix_dist_pow: float = 1.0, backend: str = "auto") -> gp.Graph:
    """The LPOSS patch graph ``W + W^T`` (not normalised), float32 weights as published (§6).

    kNN by inner product with ``min(k, N)`` neighbours (self included), weights
    ``max(s, 0) ** gamma * exp(-sigma * d ** pix_dist_pow)`` on the directed edges, ``d`` the
    distance of the patch centres, then ``W + W^T`` (:func:`graphprop.knn_graph` with
    ``symmetric=True``). The arguments are not checked (:func:`patch_propagation` checks them).

    Parameters
    ----------
    features : (N, D) float tensor, L2-normalised VM patch features
    centers : (N, 2) float tensor, patch centres (y, x) in pixels (:func:`patch_centers`)
    k, gamma, sigma, pix_dist_pow : the patch graph's settings (published 400, 3.0, 0.01, 1.0)
    backend : the kNN search of :func:`graphprop.knn` ("auto" by default)

    Returns
    -------
    :class:`graphprop.Graph` of N nodes on ``features``' device: edges sorted by (source, target),
    self-loops kept (the solver drops them), float32 weights.
    """
    n = features.shape[0]
    features = features.float()
    centers = centers.to(device=features.device, dtype=torch.float32)

    def weight(values: Tensor, edge_index: Tensor) -> Tensor:
        distance = (centers[edge_index[0]] - centers[edge_index[1]]).norm(dim=1)
        return values.clamp_min(0) ** gamma * torch.exp(-sigma * distance ** pix_dist_pow)

    return gp.knn_graph(features, min(k, n), metric="ip", backend=backend, weight=weight, symmetric=True)


def pixel_propagation(
    image: Tensor,
    scores: Tensor,
    *,
    window: int = 13,
    tau: float = 0.01,
    alpha: float = 0.95,
    tol: float = 1e-6,
    max_iter: int = 10,
) -> Tensor:
    """LPOSS+: propagate pixel scores over the local-window colour graph (§7).

    Every pixel is joined to every other pixel of the ``window x window`` square around it, with
    weight ``exp(-||lab_p - lab_q|| / tau)`` on CIE Lab (D65) divided by (100, 128, 128); W is
    symmetric by construction; ``D^-1/2 W D^-1/2`` (weights times ``d_i^-1/2`` then
    ``d_j^-1/2``, a zero degree counting as 1); then the same CG solve as the patch stage. The
    graph is never materialised: graphprop applies it as a stencil.

    Parameters
    ----------
    image : (3, H, W) float tensor, RGB in [0, 1]
    scores : (E, H, W) float tensor
    window, tau : the pixel graph's settings (published 13, 0.01; LPOSSConfig's ``pixel_window``
        and ``tau``)
    alpha, tol, max_iter : the solve's settings (published 0.95, 1e-6, 10), a
        :class:`~segmentation.config.PropagationSettings`

    Returns
    -------
    (E, H, W) tensor in ``scores``' dtype (float32 or float64), on its device.

    Raises
    ------
    TypeError
        A setting of the wrong type (``window=7.0``).
    ValueError
        Shapes that do not fit, or a setting out of range (``window=4``, ``tau=0``).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    if scores.ndim != 3 or scores.shape[1:] != image.shape[1:]:
        raise ValueError(f"scores must have shape (E, H, W) = (E, {image.shape[1]}, {image.shape[2]}), "
                         f"got {tuple(scores.shape)}")
    check_settings({"window": window, "tau": tau},
                   {"window": LPOSS_CONSTRAINTS["pixel_window"], "tau": LPOSS_CONSTRAINTS["tau"]})
    settings = PropagationSettings(alpha=alpha, tol=tol, max_iter=max_iter)
    return _pixel_stage(image, scores, window=window, tau=tau, settings=settings)


def _pixel_stage(image: Tensor, scores: Tensor, *, window: int, tau: float, settings: PropagationSettings) -> Tensor:
    """:func:`pixel_propagation` on arguments already checked: (3, H, W), (E, H, W) -> (E, H, W)."""
    dtype = scores.dtype if scores.dtype in (torch.float32, torch.float64) else torch.float32
    image = image.to(device=scores.device, dtype=torch.float32)
    scale = torch.tensor(LAB_SCALE, device=image.device).view(3, 1, 1)
    lab = (rgb_to_lab(image) / scale).to(dtype)
    graph = gp.grid_graph(lab, window // 2, tau)
    e, h, w = scores.shape
    y = scores.to(dtype).reshape(e, h * w).T
    z = _solve(graph, y, settings)
    return z.T.reshape(e, h, w).to(scores.dtype)


def merge_windows(window_scores: Tensor, boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> Tensor:
    """Per-window score maps onto the image, averaged where windows overlap (§6, "back to pixels").

    Parameters
    ----------
    window_scores : (n, E, h, w) tensor, one patch-grid score map per window
    boxes : n windows ``(y1, y2, x1, x2)`` in image pixels
    size : (H, W) of the image

    Returns
    -------
    (E, H, W) tensor: each window's map resized bilinearly (``align_corners=False``) to the
    window's size, summed into the canvas, divided by how many windows cover each pixel.
    """
    if window_scores.ndim != 4 or window_scores.shape[0] != len(boxes):
        raise ValueError(f"window_scores must be (n, E, h, w) with n = {len(boxes)} windows, "
                         f"got {tuple(window_scores.shape)}")
    height, width = size
    canvas = window_scores.new_zeros(window_scores.shape[1], height, width)
    count = window_scores.new_zeros(1, height, width)
    # torch's bilinear resize of a channels-last block (what a permuted (n, h, w, E) tensor is)
    # took 5x longer on the CPU, and its output then adds into the canvas across the grain
    for block, (y1, y2, x1, x2) in zip(window_scores.contiguous(), boxes, strict=True):
        canvas[:, y1:y2, x1:x2] += F.interpolate(block[None], size=(y2 - y1, x2 - x1), mode="bilinear",
                                                 align_corners=False)[0]
        count[:, y1:y2, x1:x2] += 1
    if bool((count == 0).any()):
        raise ValueError("the windows do not cover the whole image")
    return canvas.div_(count)  # in place: a second (E, H, W) allocation costs its page faults
