"""Every LPOSSConfig setting, pinned: the pipeline at a non-default value against an independent
computation of the published method at that value.

The reference below re-derives LPOSS / LPOSS+ step by step in numpy/scipy from
``docs/method.md`` (working size, window placement, bilinear resampling, dense kNN graph, CIE Lab,
the explicit pixel graph, one scipy CG per column); only the two networks and the text embeddings
are the encoders' own. Each case also checks that its value gives clearly different scores from
the base setting, so a pipeline that ignored the setting would fail the case.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import graphprop
from conftest import SMALL_CONFIG_KWARGS
from segmentation import LPOSS, LPOSSConfig
from segmentation.config import PropagationSettings
from segmentation.stages import patch_propagation, pixel_propagation
from test_segmentation import _dense_patch_graph, _patch_inputs, bilinear_reference, scipy_cg_per_column

pytestmark = pytest.mark.usefixtures("quiet_random_init")

# The small settings of conftest, with k above every case's patch count: the neighbour sets are then
# all patches and float rounding cannot pick other neighbours (the tiny random-weight DINO's patch
# features are close together; near-ties are common). The "k" case picks a k where they are apart.
# A 7 x 7 pixel window keeps the explicit pixel graph of the reference small (48 neighbours).
BASE = LPOSSConfig(**{**SMALL_CONFIG_KWARGS, "k": 1000, "pixel_window": 7})
CLASSES = ["road", "sky;cloud", "car"]


# --------------------------------------------------------------------------- the reference
def reference_working_size(height: int, width: int, cfg: LPOSSConfig) -> tuple[int, int]:
    """Short side to ``short_side`` unless the long side would pass ``long_side_cap``, rounded half up."""
    if max(height, width) * cfg.short_side / min(height, width) > cfg.long_side_cap:
        scale = cfg.long_side_cap / max(height, width)
    else:
        scale = cfg.short_side / min(height, width)
    return int(np.floor(height * scale + 0.5)), int(np.floor(width * scale + 0.5))


def reference_starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts 0, stride, 2 stride, ... the last one moved back to end at the border."""
    last = max(size - window, 0)
    return [min(start, last) for start in range(0, last + stride, stride)]


def reference_resize(image: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """(3, H, W) uint8 or float -> float64 in [0, 1] at ``size`` (8-bit: resized, rounded, / 255)."""
    if image.shape[1:] == size:
        return image / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    if image.dtype != np.uint8:
        return np.clip(bilinear_reference(image.astype(np.float64), size), 0, 1)
    if method == "opencv":
        import cv2

        resized = cv2.resize(image.transpose(1, 2, 0).copy(), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        return resized.transpose(2, 0, 1) / 255.0
    return np.clip(np.round(bilinear_reference(image.astype(np.float64), size)), 0, 255) / 255.0


def reference_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) of (3, H, W) sRGB in [0, 1], each channel divided by (100, 128, 128)."""
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.einsum("ij,jhw->ihw", [[0.412453, 0.357580, 0.180423],
                                    [0.212671, 0.715160, 0.072169],
                                    [0.019334, 0.119193, 0.950227]], linear)
    t = xyz / np.array([0.95047, 1.0, 1.08883])[:, None, None]
    f = np.where(t > 0.008856, np.cbrt(np.maximum(t, 0.008856)), 7.787 * t + 16 / 116)
    lab = np.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])
    return lab / np.array([100.0, 128.0, 128.0])[:, None, None]


def reference_patch_graph(features: np.ndarray, centers: np.ndarray, cfg: LPOSSConfig) -> sp.csr_matrix:
    """Dense inner products, the top min(k, N) of each row (self included), max(s, 0)^gamma
    exp(-sigma d^p), W + W^T. The k-th and (k+1)-th similarities must be apart, so that float
    rounding cannot change the neighbour sets (an ill-posed case fails here, not by chance)."""
    n = len(features)
    k = min(cfg.k, n)
    sims = features @ features.T
    order = np.argsort(-sims, axis=1, kind="stable")
    if k < n:
        ranked = np.take_along_axis(sims, order, axis=1)
        assert (ranked[:, k - 1] - ranked[:, k]).min() > 1e-5, "near-tie at the k-th neighbour: pick another input"
    rows = np.repeat(np.arange(n), k)
    cols = order[:, :k].reshape(-1)
    distance = np.linalg.norm(centers[rows] - centers[cols], axis=1)
    weight = np.maximum(sims[rows, cols], 0) ** cfg.gamma * np.exp(-cfg.sigma * distance ** cfg.pix_dist_pow)
    w = sp.csr_matrix((weight, (rows, cols)), shape=(n, n))
    return w + w.T


def reference_pixel_graph(rgb: np.ndarray, cfg: LPOSSConfig) -> sp.csr_matrix:
    """Every pair of pixels within the pixel_window square, exp(-||lab_p - lab_q|| / tau)."""
    lab = reference_lab(rgb)
    _, h, w = lab.shape
    r = cfg.pixel_window // 2
    index = np.arange(h * w).reshape(h, w)
    rows, cols, vals = [], [], []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h + min(0, dy))
            xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w + min(0, dx))
            rows.append(index[ys, xs].ravel())
            cols.append(index[yd, xd].ravel())
            vals.append(np.exp(-np.linalg.norm(lab[:, ys, xs] - lab[:, yd, xd], axis=0).ravel() / cfg.tau))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(h * w, h * w))


def reference_lposs(image: np.ndarray, class_names, vlm, vm, cfg: LPOSSConfig) -> np.ndarray:
    """(C, H, W) class scores of LPOSS / LPOSS+ for a (3, H, W) image (uint8 or float in [0, 1])."""
    height, width = image.shape[1:]
    size = reference_working_size(height, width, cfg)
    rgb = reference_resize(image, size, cfg.resize)
    h, w = size
    if cfg.sliding:
        boxes = [(y, min(y + cfg.window, h), x, min(x + cfg.window, w))
                 for y in reference_starts(h, cfg.window, cfg.stride)
                 for x in reference_starts(w, cfg.window, cfg.stride)]
    else:
        boxes = [(0, h, 0, w)]
    windows = torch.from_numpy(np.stack([rgb[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])).float()
    with torch.inference_mode():
        clip = vlm.dense_features(windows).double().numpy()  # (n, gh, gw, D)
        dino = vm.dense_features(windows).double().numpy()
        text = vlm.encode_text(class_names)
    assert clip.shape[1:3] == dino.shape[1:3], "the reference assumes one patch grid for both networks"
    n, gh, gw, _ = dino.shape
    y = clip.reshape(n * gh * gw, -1) @ text.embeddings.double().numpy().T  # (N, E) cosine similarities
    p = vm.patch_size
    centers = np.array([(y1 + p // 2 + p * row, x1 + p // 2 + p * col)
                        for y1, _, x1, _ in boxes for row in range(gh) for col in range(gw)], dtype=np.float64)
    z = scipy_cg_per_column(reference_patch_graph(dino.reshape(n * gh * gw, -1), centers, cfg), y,
                            alpha=cfg.alpha, tol=cfg.tol, max_iter=cfg.max_iter)
    blocks = z.reshape(n, gh, gw, -1).transpose(0, 3, 1, 2)
    canvas = np.zeros((y.shape[1], h, w))
    count = np.zeros((h, w))
    for block, (y1, y2, x1, x2) in zip(blocks, boxes, strict=True):
        canvas[:, y1:y2, x1:x2] += bilinear_reference(block, (y2 - y1, x2 - x1))
        count[y1:y2, x1:x2] += 1
    scores = canvas / count
    if cfg.pixel_refine:
        flat = scipy_cg_per_column(reference_pixel_graph(rgb, cfg), scores.reshape(len(scores), -1).T,
                                   alpha=cfg.alpha, tol=cfg.tol, max_iter=cfg.max_iter)
        scores = flat.T.reshape(scores.shape)
    index = text.class_index.numpy()
    per_class = np.stack([scores[index == c].max(axis=0) for c in range(text.num_classes)])
    return bilinear_reference(per_class, (height, width))


# --------------------------------------------------------------------------- the cases
# One non-default value per LPOSSConfig field (none equal to BASE's or to the published default);
# test_every_field_has_a_case fails when a field is added without one.
CASES = {
    "short_side": 80,
    "long_side_cap": 120,  # a 40 x 60 image: the long side caps at 120 before the short side reaches 96
    "window": 48,
    "stride": 16,
    "sliding": False,
    "k": 55,  # of 128 patches: the 55th and 56th similarities are 8e-5 apart or more in every row
    "gamma": 1.0,
    "sigma": 0.05,
    "pix_dist_pow": 0.5,
    "alpha": 0.6,
    "tau": 0.05,
    "pixel_window": 5,
    "tol": 0.05,  # the patch stage stops after 4-5 CG iterations, the pixel stage after 9
    "max_iter": 3,
    "pixel_refine": False,
    "resize": "opencv",
}


def picture(dtype=np.float32, height: int = 40, width: int = 60) -> np.ndarray:
    """A (3, height, width) picture: two colour regions, a ramp below, noise (the pixel graph sees edges).

    Smooth regions, as in photographs: on pure noise (``torch.rand``), where exp(-d / tau)
    underflows for most neighbours, the float32 pixel stage was seen 2e-4 (relative) away from the
    float64 reference, above the tolerance of :func:`assert_matches`.
    """
    rng = np.random.default_rng(5)
    rgb = np.zeros((3, height, width))
    half, low = width // 2, height * 5 // 8
    rgb[:, :, :half] = np.array([0.8, 0.2, 0.15])[:, None, None]
    rgb[:, :, half:] = np.array([0.15, 0.25, 0.8])[:, None, None]
    rgb[:, low:] = rgb[:, low:] * 0.5 + np.linspace(0, 0.4, width)
    rgb = np.clip(rgb + rng.uniform(-0.08, 0.08, rgb.shape), 0, 1)
    return (rgb * 255).round().astype(np.uint8) if dtype == np.uint8 else rgb.astype(np.float32)


def assert_matches(ours: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    """Apart by much more than the tolerance of :func:`assert_matches`."""
    return a.shape != b.shape or np.abs(a - b).max() > 100 * 2e-5 * np.abs(b).max()


@pytest.fixture(scope="module")
def base_reference(small_encoders):
    vlm, vm = small_encoders
    return reference_lposs(picture(), CLASSES, vlm, vm, BASE)


def test_every_field_has_a_case():
    assert set(CASES) == {f.name for f in dataclasses.fields(LPOSSConfig)}
    published = LPOSSConfig()
    for name, value in CASES.items():
        assert value != getattr(BASE, name) and value != getattr(published, name), name


def test_base_setting_matches_the_reference(small_encoders, base_reference):
    vlm, vm = small_encoders
    ours = LPOSS(vlm, vm, BASE).predict(torch.from_numpy(picture()), CLASSES)
    assert ours.shape == (2 + 1, 40, 60)
    assert_matches(ours.numpy(), base_reference)


@pytest.mark.parametrize("name", [n for n in CASES if n != "resize"])
def test_setting_is_used(name, small_encoders, base_reference):
    vlm, vm = small_encoders
    cfg = dataclasses.replace(BASE, **{name: CASES[name]})
    image = picture()
    expected = reference_lposs(image, CLASSES, vlm, vm, cfg)
    assert _differs(expected, base_reference), f"{name}={CASES[name]!r} would not tell a pipeline that ignores it"
    ours = LPOSS(vlm, vm, cfg).predict(torch.from_numpy(image), CLASSES)
    assert_matches(ours.numpy(), expected)


def test_resize_setting_is_used(small_encoders):
    """resize="opencv" on an 8-bit image is OpenCV's INTER_LINEAR; the torch rule gives other scores."""
    pytest.importorskip("cv2", reason="opencv-python-headless is not installed")
    vlm, vm = small_encoders
    image = picture(np.uint8)
    cfg = dataclasses.replace(BASE, resize=CASES["resize"])
    expected = reference_lposs(image, CLASSES, vlm, vm, cfg)
    assert _differs(expected, reference_lposs(image, CLASSES, vlm, vm, BASE))
    ours = LPOSS(vlm, vm, cfg).predict(torch.from_numpy(image), CLASSES)
    assert_matches(ours.numpy(), expected)


# --------------------------------------------------------------------------- PropagationSettings
# One non-default value per field of the settings both stages share, each stage against scipy.
PROPAGATION_CASES = {"alpha": 0.6, "tol": 0.05, "max_iter": 3}


def test_every_propagation_setting_has_a_case():
    assert set(PROPAGATION_CASES) == {f.name for f in dataclasses.fields(PropagationSettings)}
    published = PropagationSettings()
    for name, value in PROPAGATION_CASES.items():
        assert value != getattr(published, name), name
        assert getattr(LPOSSConfig(**{name: value}).propagation, name) == value, name


@pytest.mark.parametrize("name", list(PROPAGATION_CASES))
def test_propagation_setting_is_used_by_both_stages(name):
    """patch_propagation and pixel_propagation at a non-default alpha / tol / max_iter against one
    scipy CG per column at that value, which differs clearly from the published settings' result."""
    settings = dataclasses.replace(PropagationSettings(), **{name: PROPAGATION_CASES[name]})
    published = PropagationSettings().as_dict()

    features, scores, centers = _patch_inputs(n=150, seed=4)
    k, gamma, sigma, pix_dist_pow = 20, 3.0, 0.01, 1.0
    graph = _dense_patch_graph(features, centers, k, gamma, sigma, pix_dist_pow)[0]
    y = scores.double().numpy()
    expected = scipy_cg_per_column(graph, y, **settings.as_dict())
    assert _differs(expected, scipy_cg_per_column(graph, y, **published)), name
    z = patch_propagation(features, scores, centers, k=k, gamma=gamma, sigma=sigma, pix_dist_pow=pix_dist_pow,
                          **settings.as_dict())
    np.testing.assert_allclose(z.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())

    image = picture(height=12, width=15)
    pixel_scores = torch.from_numpy(np.random.default_rng(6).random((2, 12, 15))).float()
    cfg = LPOSSConfig(pixel_window=7, tau=0.05)
    matrix = reference_pixel_graph(image.astype(np.float64), cfg)
    flat = pixel_scores.double().reshape(2, -1).T.numpy()
    expected = scipy_cg_per_column(matrix, flat, **settings.as_dict()).T.reshape(2, 12, 15)
    assert _differs(expected, scipy_cg_per_column(matrix, flat, **published).T.reshape(2, 12, 15)), name
    z = pixel_propagation(torch.from_numpy(image), pixel_scores, window=7, tau=0.05, **settings.as_dict())
    assert_matches(z.numpy(), expected)


# --------------------------------------------------------------------------- knn(backend="auto")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_select_knn_backend_cuda_rule(device, monkeypatch):
    """On CUDA: KeOps for d <= 32, k <= 64 and N * M >= 1e9 when pykeops imports, else torch."""
    from graphprop import _knn

    monkeypatch.setattr(_knn, "_keops_available", lambda: True)
    select = graphprop.select_knn_backend
    assert select(100_000, 10_000, 32, 64, device) == "keops"  # N * M = 1e9 exactly
    assert select(31_623, 31_623, 3, 1, device) == "keops"
    assert select(100_000, 9_999, 32, 64, device) == "torch"  # N * M just under 1e9
    assert select(100_000, 10_000, 33, 64, device) == "torch"  # d over 32
    assert select(100_000, 10_000, 32, 65, device) == "torch"  # k over 64
    assert select(100_000, 10_000, 768, 400, device) == "torch"  # the LPOSS patch graph's shape
    monkeypatch.setattr(_knn, "_keops_available", lambda: False)
    assert select(100_000, 10_000, 32, 64, device) == "torch"  # no pykeops: never KeOps
    assert select(100_000, 10_000, 32, 64, "cpu") == "torch"


@pytest.mark.parametrize("choice", ["torch", "keops"])
def test_knn_auto_runs_the_selected_backend(choice, monkeypatch):
    """knn(backend="auto") asks select_knn_backend with (N, M, D, k, device) and runs its answer."""
    from graphprop import _knn

    asked, ran = [], []
    monkeypatch.setattr(_knn, "select_knn_backend", lambda *args: asked.append(args) or choice)
    real = _knn._knn_torch  # the torch search stands in for KeOps too: no compilation in the test
    for name in ("_knn_torch", "_knn_keops"):
        def record(x, q, k, metric, *ordered, _name=name):
            ran.append(_name)
            return real(x, q, k, metric, *ordered)

        monkeypatch.setattr(_knn, name, record)
    x = torch.randn(50, 6)
    queries = torch.randn(7, 6)
    values, indices = graphprop.knn(x, 4, queries=queries, metric="l2", backend="auto")
    assert asked == [(50, 7, 6, 4, x.device)]
    assert ran == [f"_knn_{choice}"]
    expected = torch.cdist(queries.double(), x.double()).topk(4, largest=False)
    torch.testing.assert_close(values.double(), expected.values, atol=1e-5, rtol=0)
    assert torch.equal(indices, expected.indices)
