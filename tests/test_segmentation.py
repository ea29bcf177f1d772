"""segmentation: the propagation stages against scipy, preprocessing against §1, the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F
from PIL import Image

import graphprop as gp
from conftest import SMALL_CONFIG_KWARGS
from segmentation import LPOSS, ImageFeatures, LPOSSConfig, MaskCLIP
from segmentation.color import LAB_SCALE, rgb_to_lab
from segmentation.preprocess import load_image, resize_image, window_boxes, working_size
from segmentation.stages import merge_windows, patch_centers, patch_graph, patch_propagation, pixel_propagation

pytestmark = pytest.mark.usefixtures("quiet_random_init")

SMALL = LPOSSConfig(**SMALL_CONFIG_KWARGS)


def scipy_cg_per_column(matrix, y, alpha=0.95, tol=1e-6, max_iter=10):
    """The published solve: normalise without self-loops, one float64 scipy CG per column."""
    w = sp.csr_matrix(matrix, dtype=np.float64)
    w = w - sp.diags(w.diagonal())
    degree = np.asarray(w.sum(axis=1)).ravel()
    degree[degree == 0] = 1
    d = sp.diags(1 / np.sqrt(degree))
    system = sp.eye(w.shape[0]) - alpha * (d @ w @ d)
    return np.stack([spla.cg(system, col, rtol=tol, atol=0, maxiter=max_iter)[0] for col in y.T], axis=1)


# --------------------------------------------------------------------------- stages
def test_patch_propagation_equals_published_construction():
    """Dense similarities + top-k, weights max(s,0)^gamma exp(-sigma d^p), W + W^T, scipy CG."""
    g = torch.Generator().manual_seed(0)
    n, k = 300, 25
    features = F.normalize(torch.randn(n, 16, generator=g), dim=1)
    scores = torch.rand(n, 4, generator=g)
    centers = torch.rand(n, 2, generator=g) * 200
    z = patch_propagation(features, scores, centers, k=k, gamma=3.0, sigma=0.01, pix_dist_pow=1.0)

    f = features.double().numpy()
    sims = f @ f.T
    top = np.argsort(-sims, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    cols = top.reshape(-1)
    c = centers.double().numpy()
    dist = np.linalg.norm(c[rows] - c[cols], axis=1)
    w = np.maximum(sims[rows, cols], 0) ** 3.0 * np.exp(-0.01 * dist)
    matrix = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    expected = scipy_cg_per_column(matrix + matrix.T, scores.double().numpy())
    assert z.dtype == torch.float32 and z.shape == (n, 4)
    np.testing.assert_allclose(z.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


PATCH_SETTINGS = [  # (k, gamma, sigma, pix_dist_pow): the published ones, then each changed
    (25, 3.0, 0.01, 1.0), (60, 3.0, 0.01, 1.0), (25, 1.5, 0.01, 1.0), (25, 3.0, 0.03, 1.0), (25, 3.0, 0.01, 1.4),
]


def _patch_inputs(n=300, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(n, d, generator=g), dim=1)
    return features, torch.rand(n, 4, generator=g), torch.rand(n, 2, generator=g) * 200


def _dense_patch_graph(features, centers, k, gamma, sigma, pix_dist_pow):
    """Independent W + W^T (float64 numpy, dense) and where its edges are."""
    f = features.double().numpy()
    sims = f @ f.T
    n = len(f)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(n), k)
    cols = top.reshape(-1)
    dist = np.linalg.norm(centers.double().numpy()[rows] - centers.double().numpy()[cols], axis=1)
    w = np.zeros((n, n))
    w[rows, cols] = np.maximum(sims[rows, cols], 0) ** gamma * np.exp(-sigma * dist**pix_dist_pow)
    mask = np.zeros((n, n), dtype=bool)
    mask[rows, cols] = True
    return w + w.T, mask | mask.T


@pytest.mark.parametrize("k, gamma, sigma, pix_dist_pow", PATCH_SETTINGS)
def test_patch_graph_matches_dense_and_the_previous_construction(k, gamma, sigma, pix_dist_pow):
    """patch_graph: the edges of W + W^T of the top-k (sorted, self-loops included) with
    max(s,0)^gamma exp(-sigma d^p) summed from both sides, against float64 numpy; and bit for
    bit the previous construction (knn, the directed edge list, symmetrize)."""
    features, _, centers = _patch_inputs()
    graph = patch_graph(features, centers, k=k, gamma=gamma, sigma=sigma, pix_dist_pow=pix_dist_pow)
    expected, mask = _dense_patch_graph(features, centers, k, gamma, sigma, pix_dist_pow)
    rows, cols = np.nonzero(mask)
    np.testing.assert_array_equal(graph.edge_index.numpy(), np.stack([rows, cols]))
    assert graph.edge_weight.dtype == torch.float32
    np.testing.assert_allclose(graph.edge_weight.numpy(), expected[rows, cols], rtol=2e-6, atol=1e-7)

    values, indices = gp.knn(features, k, metric="ip")
    r = torch.arange(len(features)).repeat_interleave(k)
    c = indices.reshape(-1)
    distance = (centers[r] - centers[c]).norm(dim=1)
    w = values.reshape(-1).clamp_min(0) ** gamma * torch.exp(-sigma * distance ** pix_dist_pow)
    previous = gp.symmetrize(gp.Graph(torch.stack([r, c]), w, len(features)))
    assert torch.equal(graph.edge_index, previous.edge_index)
    # same formula on the same numbers; torch's vectorised and scalar pow/exp can differ in the last
    # bit, and exp(-sigma d^p) multiplies that by sigma d^p (up to ~20 here)
    torch.testing.assert_close(graph.edge_weight, previous.edge_weight, rtol=1e-5, atol=0)


@pytest.mark.parametrize("k, gamma, sigma, pix_dist_pow", PATCH_SETTINGS)
def test_patch_propagation_settings_match_scipy(k, gamma, sigma, pix_dist_pow):
    """Every setting is used: the result matches scipy on the dense graph built with the
    settings given, and differs from the published settings' result where one was changed."""
    features, scores, centers = _patch_inputs(seed=1)
    z = patch_propagation(features, scores, centers, k=k, gamma=gamma, sigma=sigma, pix_dist_pow=pix_dist_pow)
    expected = scipy_cg_per_column(_dense_patch_graph(features, centers, k, gamma, sigma, pix_dist_pow)[0],
                                   scores.double().numpy())
    scale = np.abs(expected).max()
    np.testing.assert_allclose(z.numpy(), expected, rtol=0, atol=1e-5 * scale)
    if (k, gamma, sigma, pix_dist_pow) != PATCH_SETTINGS[0]:
        published = scipy_cg_per_column(_dense_patch_graph(features, centers, *PATCH_SETTINGS[0])[0],
                                        scores.double().numpy())
        assert np.abs(published - expected).max() > 1e-3 * scale


@pytest.mark.parametrize("isolated", [False, True])
def test_patch_solver_graph_is_the_normalisation_of_label_propagation(isolated):
    """The float64 W_hat patch_propagation hands to the solver (compiled on the CPU) equals
    graphprop's sym_normalize(remove_self_loops(.)) of the float64 graph, a zero degree
    (a node whose only edge is its self-loop) counting as 1."""
    from segmentation.stages import _normalized

    features, _, centers = _patch_inputs(n=120)
    graph = patch_graph(features, centers, k=9, gamma=2.0)
    if isolated:  # node 0 keeps only its self-loop
        row, col = graph.edge_index
        keep = ((row != 0) & (col != 0)) | ((row == 0) & (col == 0))
        graph = gp.Graph(graph.edge_index[:, keep], graph.edge_weight[keep], graph.num_nodes)
    fast = _normalized(graph)
    reference = gp.sym_normalize(gp.remove_self_loops(graph.to(dtype=torch.float64)))
    assert torch.equal(fast.edge_index, reference.edge_index)
    assert fast.edge_weight.dtype == torch.float64
    torch.testing.assert_close(fast.edge_weight, reference.edge_weight, rtol=1e-15, atol=0)


def test_patch_propagation_caps_k_and_validates():
    features = F.normalize(torch.randn(10, 4), dim=1)
    z = patch_propagation(features, torch.rand(10, 2), torch.rand(10, 2), k=400)
    assert z.shape == (10, 2)
    with pytest.raises(ValueError, match="same N"):
        patch_propagation(features, torch.rand(9, 2), torch.rand(10, 2))
    with pytest.raises(ValueError, match="alpha"):
        patch_propagation(features, torch.rand(10, 2), torch.rand(10, 2), alpha=1.0)


@pytest.mark.parametrize("tau", [0.01, 0.1])
def test_pixel_propagation_equals_explicit_matrix(tau):
    """Every pair within the 13 x 13 window, exp(-||lab_p - lab_q|| / tau), scipy CG per column."""
    g = torch.Generator().manual_seed(1)
    h, w, window = 14, 17, 13
    image = (torch.rand(3, h, w, generator=g) * 0.3 + torch.linspace(0, 0.6, w)).clamp(0, 1)
    scores = torch.rand(3, h, w, generator=g)
    z = pixel_propagation(image, scores, window=window, tau=tau)

    lab = (rgb_to_lab(image.double()) / torch.tensor(LAB_SCALE, dtype=torch.float64).view(3, 1, 1)).numpy()
    r = window // 2
    rows, cols, vals = [], [], []
    for y in range(h):
        for x in range(w):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    yy, xx = y + dy, x + dx
                    if (dy or dx) and 0 <= yy < h and 0 <= xx < w:
                        rows.append(y * w + x)
                        cols.append(yy * w + xx)
                        vals.append(np.exp(-np.linalg.norm(lab[:, y, x] - lab[:, yy, xx]) / tau))
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w))
    expected = scipy_cg_per_column(matrix, scores.double().reshape(3, -1).T.numpy()).T.reshape(3, h, w)
    np.testing.assert_allclose(z.numpy(), expected, rtol=0, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize("patch_size, grid", [(16, (4, 4)), (14, (3, 5)), (8, (1, 2))])
def test_patch_centers_window_by_window_row_major(patch_size, grid):
    """Centre of patch (r, c) of window (y1, y2, x1, x2): (y1 + p // 2 + p r, x1 + p // 2 + p c),
    written out patch by patch, in the order of vm_features.reshape(n * gh * gw, D)."""
    boxes = [(0, 64, 0, 64), (0, 64, 37, 101), (20, 84, 0, 64), (20, 84, 37, 101)]
    gh, gw = grid
    expected = []
    for y1, _, x1, _ in boxes:
        for row in range(gh):
            for col in range(gw):
                expected.append((y1 + patch_size // 2 + patch_size * row, x1 + patch_size // 2 + patch_size * col))
    centers = patch_centers(boxes, grid, patch_size)
    assert centers.dtype == torch.float32 and centers.shape == (len(boxes) * gh * gw, 2)
    assert torch.equal(centers, torch.tensor(expected, dtype=torch.float32))
    assert patch_centers([], grid, patch_size).shape == (0, 2)


def test_the_old_module_name_is_a_deprecated_alias():
    """``segmentation.lposs`` (the stages' old module) gives the same functions and warns on import."""
    import importlib
    import sys

    import segmentation.stages as stages

    sys.modules.pop("segmentation.lposs", None)
    with pytest.warns(DeprecationWarning, match="segmentation.lposs is deprecated: import from segmentation.stages"):
        old = importlib.import_module("segmentation.lposs")
    for name in ("merge_windows", "patch_graph", "patch_propagation", "pixel_propagation"):
        assert getattr(old, name) is getattr(stages, name)
    assert set(old.__all__) <= set(stages.__all__)


def test_merge_windows_averages_overlaps():
    boxes = window_boxes(100, 150, 64, 32)
    maps = torch.ones(len(boxes), 2, 4, 4)
    merged = merge_windows(maps, boxes, (100, 150))
    torch.testing.assert_close(merged, torch.ones(2, 100, 150))
    single = torch.rand(1, 3, 5, 7)
    torch.testing.assert_close(
        merge_windows(single, [(0, 40, 0, 56)], (40, 56)),
        F.interpolate(single, size=(40, 56), mode="bilinear", align_corners=False)[0],
    )
    with pytest.raises(ValueError, match="do not cover"):
        merge_windows(torch.rand(1, 1, 2, 2), [(0, 10, 0, 10)], (10, 20))


def test_merge_windows_of_a_permuted_tensor_is_the_explicit_average():
    """The pipeline hands a permuted (n, h, w, E) tensor (channels last): the result is the
    per-pixel average of each window's bilinear map, written out with numpy over random maps."""
    boxes = window_boxes(100, 150, 64, 32)
    z = torch.rand(len(boxes), 4, 4, 3)
    merged = merge_windows(z.permute(0, 3, 1, 2), boxes, (100, 150))
    total, count = np.zeros((3, 100, 150)), np.zeros((100, 150))
    for block, (y1, y2, x1, x2) in zip(z.permute(0, 3, 1, 2).contiguous(), boxes, strict=True):
        total[:, y1:y2, x1:x2] += F.interpolate(block[None], size=(y2 - y1, x2 - x1), mode="bilinear",
                                                align_corners=False)[0].double().numpy()
        count[y1:y2, x1:x2] += 1
    assert count.max() > 1  # overlaps
    np.testing.assert_allclose(merged.numpy(), total / count, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- preprocessing (§1)
def test_working_size():
    assert working_size(375, 500) == (448, 597)
    assert working_size(500, 375) == (597, 448)
    assert working_size(100, 1000) == (205, 2048)  # long side capped
    assert working_size(448, 448) == (448, 448)


def test_window_boxes_follow_the_published_placement():
    boxes = window_boxes(448, 597)
    assert len(boxes) == 15
    assert boxes[0] == (0, 224, 0, 224) and boxes[4] == (0, 224, 373, 597) and boxes[-1] == (224, 448, 373, 597)
    count = torch.zeros(448, 597)
    for y1, y2, x1, x2 in boxes:
        assert (y2 - y1, x2 - x1) == (224, 224)
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    assert window_boxes(100, 300) == [(0, 100, 0, 224), (0, 100, 76, 300)]  # smaller than a window
    assert window_boxes(50, 60) == [(0, 50, 0, 60)]


def bilinear_reference(image: np.ndarray, size) -> np.ndarray:
    """Half-pixel-centre bilinear resampling, no antialiasing, written out (OpenCV INTER_LINEAR)."""
    h, w = image.shape[-2:]
    out_h, out_w = size

    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = taps(h, out_h)
    x0, x1, fx = taps(w, out_w)
    top = image[:, y0][:, :, x0] * (1 - fx) + image[:, y0][:, :, x1] * fx
    bottom = image[:, y1][:, :, x0] * (1 - fx) + image[:, y1][:, :, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def test_resize_rule_of_section_1():
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 37, 50), dtype=torch.uint8, generator=g)
    resized = resize_image(image, (67, 91))
    expected = np.round(bilinear_reference(image.double().numpy(), (67, 91))) / 255
    assert np.abs(resized.double().numpy() - expected).max() <= 1 / 255 + 1e-6  # ties may round either way
    assert (np.abs(resized.double().numpy() - expected) > 1e-6).mean() < 0.01
    assert torch.equal(resized * 255, (resized * 255).round())  # kept 8-bit before / 255
    as_float = image.float() / 255
    at_size = resize_image(as_float, (37, 50))
    assert at_size is as_float  # used exactly as given
    shrunk = resize_image(as_float, (20, 30))
    np.testing.assert_allclose(shrunk.numpy(), bilinear_reference(as_float.double().numpy(), (20, 30)), atol=1e-5)


def test_opencv_resize_option(monkeypatch, small_encoders):
    """resize="opencv" is OpenCV's own INTER_LINEAR on the 8-bit image (the published pipeline's call),
    within one level of the torch rule; without OpenCV it says how to install it."""
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed")
    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8, generator=g)
    size = working_size(375, 500)
    ours = resize_image(image, size, "opencv")
    published = cv2.resize(image.permute(1, 2, 0).numpy().copy(), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    assert torch.equal(ours * 255, torch.from_numpy(published).permute(2, 0, 1).float())
    torch_rule = resize_image(image, size)
    assert (ours - torch_rule).abs().max() <= 1 / 255 + 1e-7
    assert (ours != torch_rule).any()  # the two rules are not the same arithmetic
    as_float = image.float() / 255
    torch.testing.assert_close(resize_image(as_float, (40, 50), "opencv"), resize_image(as_float, (40, 50)))
    with pytest.raises(ValueError, match=r"resize method must be one of \['torch', 'opencv'\], got 'pil'"):
        resize_image(image, size, "pil")
    with pytest.raises(TypeError, match="resize method must be a str"):
        resize_image(image, size, 1)
    with pytest.raises(ValueError, match="LPOSSConfig.resize"):
        LPOSSConfig(resize="pil")
    vlm, vm = small_encoders
    config = LPOSSConfig(**{**SMALL_CONFIG_KWARGS, "resize": "opencv"})
    small = image[:, :50, :70]
    features = LPOSS(vlm, vm, config).encode(small)
    expected = cv2.resize(small.permute(1, 2, 0).numpy().copy(), (134, 96), interpolation=cv2.INTER_LINEAR)
    assert torch.equal(features.image * 255, torch.from_numpy(expected).permute(2, 0, 1).float())
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)
    with pytest.raises(ImportError, match="pip install opencv-python-headless"):
        resize_image(image, size, "opencv")


def test_image_inputs(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert torch.equal(load_image(rgb), torch.from_numpy(rgb).permute(2, 0, 1))
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert torch.equal(load_image(tmp_path / "a.png"), load_image(Image.fromarray(rgb)))
    assert load_image(Image.fromarray(rgb[:, :, 0])).shape == (3, 20, 30)  # greyscale
    assert load_image(Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]))).shape == (3, 20, 30)  # RGBA
    sixteen = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    Image.fromarray(sixteen).save(tmp_path / "b.png")
    loaded = load_image(tmp_path / "b.png")
    assert loaded.dtype == torch.float32 and loaded.shape == (3, 20, 30)
    np.testing.assert_allclose(loaded[0].numpy(), sixteen / 65535, atol=1e-6)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: displayed 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "c.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "c.jpg").shape == (3, 30, 20)
    (tmp_path / "d.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "d.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_config_is_validated():
    assert LPOSSConfig().k == 400 and LPOSSConfig().pixel_refine
    with pytest.raises(ValueError, match="LPOSSConfig.alpha"):
        LPOSSConfig(alpha=1.5)
    with pytest.raises(ValueError, match="LPOSSConfig.pixel_window"):
        LPOSSConfig(pixel_window=12)
    with pytest.raises(ValueError, match="LPOSSConfig.k"):
        LPOSSConfig(k=0)


# --------------------------------------------------------------------------- pipeline
def test_pipeline_shapes_determinism_and_reuse(small_encoders):
    vlm, vm = small_encoders
    model = LPOSS(vlm, vm, SMALL)
    image = np.random.default_rng(1).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    classes = ["road", "car", "sky;cloud"]
    scores = model.predict(image, classes)
    assert scores.shape == (3, 30, 45)
    assert torch.equal(scores, model.predict(image, classes))  # deterministic
    features = model.encode(image)
    assert isinstance(features, ImageFeatures) and features.image.shape == (3, 96, 144)
    torch.testing.assert_close(model.predict(features, classes), scores, atol=0, rtol=0)
    labels = model.segment([image, features], classes)
    assert len(labels) == 2 and labels[0].dtype == torch.long and torch.equal(labels[0], labels[1])


def test_lposs_refuses_features_without_vm_features(small_encoders):
    """MaskCLIP's features carry no VM features: LPOSS says so in one line (it used to fail on None.to)."""
    vlm, vm = small_encoders
    image = np.random.default_rng(3).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    features = MaskCLIP(vlm, SMALL).encode(image)
    assert features.vm_features is None
    with pytest.raises(ValueError, match="LPOSS needs ImageFeatures with vm_features"):
        LPOSS(vlm, vm, SMALL).predict(features, ["road", "sky"])


def test_synonyms_reduce_by_max(small_encoders):
    """Columns propagate independently, so a class's score is the max of its synonyms' scores
    (taken before the final resize: the image is at the working size here, so that is the identity)."""
    vlm, vm = small_encoders
    image = np.random.default_rng(2).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    for model in (LPOSS(vlm, vm, SMALL), MaskCLIP(vlm, SMALL)):
        features = model.encode(image)
        apart = model.predict(features, ["road", "sky", "cloud"])
        joined = model.predict(features, ["road", "sky;cloud"])
        torch.testing.assert_close(joined[1], torch.maximum(apart[1], apart[2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(joined[0], apart[0], atol=1e-5, rtol=0)


def test_lposs_without_pixel_stage_and_whole_image(small_encoders):
    """pixel_refine=False stops after the patch stage; sliding=False makes the whole image one window
    (here 96 x 134, padded to a 6 x 9 patch grid): scores against the step-by-step reference."""
    from dataclasses import replace

    from test_settings import BASE, assert_matches, picture, reference_lposs

    vlm, vm = small_encoders
    image = torch.from_numpy(picture(height=50, width=70))
    plain, whole = replace(BASE, pixel_refine=False), replace(BASE, sliding=False)
    assert LPOSS(vlm, vm, whole).encode(image).boxes == [(0, 96, 0, 134)]
    for config in (plain, whole, replace(whole, pixel_refine=False)):
        scores = LPOSS(vlm, vm, config).predict(image, "a,b")
        assert scores.shape == (2, 50, 70)
        assert_matches(scores.numpy(), reference_lposs(image.numpy(), "a,b", vlm, vm, config))


def test_stages_are_reported_and_each_network_runs_once(small_encoders, monkeypatch):
    """``on_stage`` names every stage of :attr:`stages` in order; one predict on an image runs each
    network once over the batch of all windows; a predict on ImageFeatures runs neither."""
    vlm, vm = small_encoders
    calls = {"vlm": [], "vm": []}
    for name, encoder in (("vlm", vlm), ("vm", vm)):
        original = encoder.dense_features
        monkeypatch.setattr(encoder, "dense_features",
                            lambda images, _f=original, _n=name: calls[_n].append(images.shape[0]) or _f(images))
    image = torch.rand(3, 40, 100)
    for model in (LPOSS(vlm, vm, SMALL), LPOSS(vlm, vm, LPOSSConfig(**{**SMALL.as_dict(), "pixel_refine": False})),
                  MaskCLIP(vlm, SMALL)):
        for key in calls:
            calls[key].clear()
        seen: list[str] = []
        model.predict(image, "a,b", on_stage=seen.append)
        assert tuple(seen) == model.stages
        windows = len(model.encode(image).boxes)
        assert calls["vlm"] == [windows, windows]  # predict, then the encode just above
        assert calls["vm"] == ([windows, windows] if model.vm is not None else [])
        seen.clear()
        model.predict(model.encode(image), "a,b", on_stage=seen.append)
        assert tuple(seen) == tuple(s for s in model.stages if s not in ("preprocess", "vlm", "vm"))
    assert LPOSS(vlm, vm, SMALL).stages == ("text", "preprocess", "vlm", "vm", "patch propagation",
                                            "pixel propagation")
    assert MaskCLIP(vlm, SMALL).stages == ("text", "preprocess", "vlm")


def test_stage_timer_adds_up_each_stage(monkeypatch):
    from segmentation import pipeline

    clock = iter([0.0, 1.0, 1.5, 4.0, 4.0, 6.5])  # start text, end it, start vlm, end it, start text, end
    monkeypatch.setattr(pipeline.time, "perf_counter", lambda: next(clock))
    timer = pipeline.StageTimer({"text": 2.0})  # earlier totals go on
    timer("text")
    timer("vlm")
    timer("text")
    timer.stop()
    timer.stop()  # nothing running: no change
    assert timer.seconds == {"text": 2.0 + 1.0 + 2.5, "vlm": 2.5}


def test_encode_batch_shares_each_network_stage_s_seconds_over_its_images(small_encoders, monkeypatch):
    """ImageFeatures.timings (segmentation.batch reports them): each stage's seconds of the batch,
    divided evenly over its images, on a clock that only the networks move (10 s VLM, 100 s VM)."""
    from segmentation import pipeline

    vlm, vm = small_encoders
    clock = [0.0]
    monkeypatch.setattr(pipeline.time, "perf_counter", lambda: clock[0])
    for encoder, seconds in ((vlm, 10.0), (vm, 100.0)):
        def timed(images, _f=encoder.dense_features, _s=seconds):
            clock[0] += _s
            return _f(images)

        monkeypatch.setattr(encoder, "dense_features", timed)
    images = [torch.rand(3, 40, 100), torch.rand(3, 40, 100)]  # one window size: one batch per network
    features = LPOSS(vlm, vm, SMALL).encode_batch(images)
    assert [f.timings for f in features] == [{"preprocess": 0.0, "vlm": 5.0, "vm": 50.0}] * 2
    assert MaskCLIP(vlm, SMALL).encode_batch(images[:1])[0].timings == {"preprocess": 0.0, "vlm": 10.0}


def test_the_stages_run_the_published_cg_without_convergence_warnings():
    """Both stages stop at max_iter by design (published): the unresolved-rows warning that
    graphprop's cg gives by default on these sparse scores stays silent there."""
    import warnings

    gen = torch.Generator().manual_seed(3)
    image = torch.rand(3, 24, 30, generator=gen)
    scores = torch.zeros(2, 24, 30)
    scores[0, :2, :2] = 1.0  # scores far from most pixels: their rows are below CG's residual
    scores[1, -2:, -2:] = 1.0
    lab = rgb_to_lab(image) / torch.tensor(LAB_SCALE).view(3, 1, 1)
    with pytest.warns(gp.ConvergenceWarning, match="below the residual"):
        gp.label_propagation(gp.grid_graph(lab, 6, 0.01), scores.reshape(2, -1).T, solver="cg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixel_propagation(image, scores)
