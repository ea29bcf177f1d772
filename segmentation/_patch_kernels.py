"""Compiled CPU loop (numba) of the LPOSS patch-graph weights, compiled on first use and
cached on disk; :func:`segmentation.stages.patch_graph`'s torch formula is its twin."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, boundscheck=False)
def patch_weights(values, indices, centers, gamma, sigma, pix_dist_pow):  # pragma: no cover - compiled
    """``max(s, 0) ** gamma * exp(-sigma * d ** pix_dist_pow)`` of each kNN entry, in float32.

    Parameters
    ----------
    values : (N, k) float32, the similarities ``s`` of node i to its neighbours
    indices : (N, k) int64, the neighbours
    centers : (N, 2) float32, patch centres (y, x) in pixels; ``d`` is the distance of the
        centres of i and its neighbour

    Returns
    -------
    (N, k) float32 weights.
    """
    n, k = values.shape
    out = np.empty((n, k), dtype=np.float32)
    g = np.float32(gamma)
    s = np.float32(sigma)
    p = np.float32(pix_dist_pow)
    cube = gamma == 3.0  # the published gamma: s * s * s, as torch computes s ** 3.0
    linear = pix_dist_pow == 1.0  # the published p: d itself
    zero = np.float32(0)
    for i in numba.prange(n):
        yi = centers[i, 0]
        xi = centers[i, 1]
        for t in range(k):
            j = indices[i, t]
            dy = yi - centers[j, 0]
            dx = xi - centers[j, 1]
            d = np.sqrt(dy * dy + dx * dx)
            v = max(values[i, t], zero)
            similarity = v * v * v if cube else v ** g
            out[i, t] = similarity * np.exp(-s * (d if linear else d ** p))
    return out
