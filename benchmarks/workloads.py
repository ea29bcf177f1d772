"""The benchmark workloads (shared by the benchmark suites and the baseline).

- the LPOSS+ pixel graph of a 448 x 597 RGB image: radius 6, weights
  ``exp(-||lab_p - lab_q|| / 0.01)`` on Lab / (100, 128, 128) colours, 46 score
  columns, 10 CG iterations (spec section 7);
- the LPOSS patch graph: 2,940 nodes, D=768 features, k=400, 46 columns (section 6).

The image is synthetic (no data can be downloaded here) but photo-like: smooth
shaded regions with sharp borders, texture and sensor noise, so colour weights span
the same range (many underflow to denormals or zero in float32) as on a photo.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from segmentation.color import LAB_SCALE, rgb_to_lab

HEIGHT, WIDTH = 448, 597
COLUMNS = 46
RADIUS = 6
TAU = 0.01
ALPHA = 0.95
TOL = 1e-6
MAX_ITER = 10


def synthetic_photo(height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1], 8-bit quantised like a decoded photo."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    image = torch.zeros(3, height, width)
    # sky-like vertical gradient, then a few shapes with their own shading
    image += torch.stack([0.35 + 0.3 * yy, 0.5 + 0.3 * yy, 0.85 - 0.2 * yy])
    for _ in range(12):
        cy, cx = torch.rand(2, generator=g)
        ry, rx = 0.05 + 0.25 * torch.rand(2, generator=g)
        colour = torch.rand(3, 1, 1, generator=g)
        mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < 1
        shade = 0.8 + 0.2 * torch.cos(6 * math.pi * (yy - cy))
        image = torch.where(mask, colour * shade, image)
    ground = yy > 0.7 + 0.05 * torch.sin(8 * math.pi * xx)
    texture = 0.08 * torch.sin(40 * math.pi * xx) * torch.sin(31 * math.pi * yy)
    image = torch.where(ground, torch.stack([0.3 + texture, 0.45 + texture, 0.2 + texture]), image)
    image = image + 0.02 * torch.randn(3, height, width, generator=g)
    return (image.clamp(0, 1) * 255).round() / 255


def pixel_workload(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(lab (3, H, W) float32 scaled by (100, 128, 128), scores (H * W, 46) float32)."""
    image = synthetic_photo(seed=seed)
    lab = rgb_to_lab(image) / torch.tensor(LAB_SCALE).view(3, 1, 1)
    g = torch.Generator().manual_seed(seed + 1)
    scores = torch.rand(HEIGHT * WIDTH, COLUMNS, generator=g) * 0.3
    return lab, scores


def patch_workload(seed: int = 0, n: int = 2940, d: int = 768, k: int = 400) -> tuple[torch.Tensor, ...]:
    """(features (N, D) L2-normalised, scores (N, 46), centres (N, 2)) of a patch graph
    with clustered features, like the patches of 15 windows."""
    g = torch.Generator().manual_seed(seed)
    centers_feat = torch.randn(20, d, generator=g)
    assign = torch.randint(0, 20, (n,), generator=g)
    feats = centers_feat[assign] + 0.8 * torch.randn(n, d, generator=g)
    feats = torch.nn.functional.normalize(feats, dim=1)
    scores = torch.rand(n, COLUMNS, generator=g) * 0.3
    rows = torch.arange(n) // 14 % 14
    cols = torch.arange(n) % 14
    centres = torch.stack([8.0 + 16 * rows, 8.0 + 16 * cols], dim=1)
    return feats, scores, centres


# ------------------------------------------------------------------ baseline
def baseline_pixel_build(lab: torch.Tensor, radius: int = RADIUS, tau: float = TAU):
    """What the published code does: explicit index lists of every (p, q) pair of the
    window, weights per pair, a scipy CSR matrix, then D^-1/2 W D^-1/2."""
    import scipy.sparse as sp

    c, h, w = lab.shape
    feats = lab.reshape(c, -1).T.contiguous()
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    rows, cols = [], []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx == 0:
                continue
            ok = (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)
            p = (ys * w + xs)[ok]
            rows.append(p)
            cols.append(p + dy * w + dx)
    row = torch.from_numpy(np.concatenate(rows))
    col = torch.from_numpy(np.concatenate(cols))
    dist = (feats[row] - feats[col]).norm(dim=1)
    weight = torch.exp(-dist / tau)
    n = h * w
    deg = torch.zeros(n).index_add_(0, row, weight)
    dinv = torch.where(deg > 0, deg, torch.ones_like(deg)).sqrt().reciprocal()
    weight = weight * dinv[row] * dinv[col]
    return sp.csr_matrix((weight.numpy(), (row.numpy(), col.numpy())), shape=(n, n))


def baseline_solve(w_hat, scores: np.ndarray, alpha: float = ALPHA, tol: float = TOL, max_iter: int = MAX_ITER):
    """One float64 scipy CG per column on ``I - alpha W_hat`` (the published solve)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spl

    n = w_hat.shape[0]
    a = sp.eye(n, format="csr") - alpha * w_hat.astype(np.float64)
    out = np.zeros(scores.shape, dtype=np.float64)
    for c in range(scores.shape[1]):
        out[:, c], _ = spl.cg(a, scores[:, c].astype(np.float64), rtol=tol, maxiter=max_iter)
    return out


def baseline_patch_graph(features: torch.Tensor, centres: torch.Tensor, k: int = 400, gamma: float = 3.0,
                         sigma: float = 0.01, pix_dist_pow: float = 1.0):
    """The same graph the published way (numpy top-k in place of faiss, scipy sparse),
    normalised: D^-1/2 (W + W^T) D^-1/2 without self-loops."""
    import scipy.sparse as sp

    f = features.numpy()
    sims = f @ f.T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    n = f.shape[0]
    rows = np.repeat(np.arange(n), k)
    cols = idx.reshape(-1)
    s = sims[rows, cols]
    c = centres.numpy()
    dist = np.linalg.norm(c[rows] - c[cols], axis=1)
    w = np.maximum(s, 0) ** gamma * np.exp(-sigma * dist**pix_dist_pow)
    mat = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    mat = mat + mat.T
    mat.setdiag(0)
    mat.eliminate_zeros()
    d = np.asarray(mat.sum(1)).ravel()
    d[d == 0] = 1
    dinv = sp.diags(1 / np.sqrt(d))
    return dinv @ mat @ dinv


def peak_memory_mb(statement: str, setup: str, total: bool = False) -> float:
    """Peak resident memory (MiB) added by ``statement`` in a fresh Python process,
    after ``setup`` ran there: the kernel's high-water mark is reset between them.
    ``total=True``: the process's whole peak resident memory while ``statement`` ran."""
    import subprocess
    import sys

    script = "\n".join(
        [
            "import gc, re",
            setup,
            "gc.collect()",
            "def rss(field):",
            "    text = open('/proc/self/status').read()",
            "    return int(re.search(field + r':\\s+(\\d+)', text).group(1)) / 1024",
            "with open('/proc/self/clear_refs', 'w') as f:",
            "    f.write('5')  # reset VmHWM to the current RSS",
            "base = rss('VmRSS')",
            statement,
            f"print(rss('VmHWM') - {0 if total else 'base'})",
        ]
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"memory measurement failed:\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


# VOC's class list as the published protocol gives it (../shared/benchmarks/datasets.json):
# 21 classes, the background with 26 synonyms, so 46 text embeddings.
VOC_CLASSES = (
    "sky;wall;tree;wood;grass;road;sea;river;mountain;sands;desk;bed;building;cloud;lamp;door;"
    "window;wardrobe;ceiling;shelf;curtain;stair;floor;hill;rail;fence",
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tvmonitor",
)


def window_batch(count: int = 15, size: int = 224, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) crops of the synthetic photo, as the sliding windows of a
    448 x 597 image (3 rows x 5 columns at stride 112 = 15 windows)."""
    image = synthetic_photo(seed=seed)
    starts_y = [min(i * 112, HEIGHT - size) for i in range(3)]
    starts_x = [min(i * 112, WIDTH - size) for i in range(5)]
    crops = [image[:, y:y + size, x:x + size] for y in starts_y for x in starts_x]
    return torch.stack(crops[:count])


# ------------------------------------------------------------------ the published code's network passes
def published_maskclip(encoder, images):
    """The published way: the whole CLIP image forward with a hook on the second-to-last block,
    then the value path from the full in-projection (``models/maskclip/maskclip.py``)."""
    visual = encoder.model.visual
    stash = {}
    handle = visual.transformer.resblocks[-2].register_forward_hook(lambda m, i, o: stash.update(x=o))
    try:
        x = (images - torch.tensor(encoder.mean).view(1, 3, 1, 1)) / torch.tensor(encoder.std).view(1, 3, 1, 1)
        encoder.model.encode_image(x)
    finally:
        handle.remove()
    x, block = stash["x"], visual.transformer.resblocks[-1]
    y = F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias)
    batch, tokens, width3 = y.shape
    y = y.view(batch, tokens, 3, width3 // 3).permute(2, 0, 1, 3).reshape(3 * batch, tokens, width3 // 3)
    y = F.linear(y, block.attn.out_proj.weight, block.attn.out_proj.bias)
    v = y.tensor_split(3, dim=0)[2] + x
    v = v + block.mlp(block.ln_2(v))
    v = visual.ln_post(v)[:, 1:] @ visual.proj
    side = int(round((tokens - 1) ** 0.5))
    return F.normalize(v, dim=-1).reshape(batch, side, side, -1)


def published_dino(encoder, images):
    """The published way: the whole DINO forward with a hook on the last block's qkv."""
    model = encoder.model
    stash = {}
    handle = model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: stash.update(qkv=o))
    try:
        x = (images - torch.tensor(encoder.mean).view(1, 3, 1, 1)) / torch.tensor(encoder.std).view(1, 3, 1, 1)
        model(x)
    finally:
        handle.remove()
    qkv = stash["qkv"]
    batch, tokens, c3 = qkv.shape
    heads = model.blocks[-1].attn.num_heads
    v = qkv.reshape(batch, tokens, 3, heads, c3 // 3 // heads).permute(2, 0, 3, 1, 4)[2]
    v = v.transpose(1, 2)[:, 1:].flatten(-2, -1)
    side = int(round((tokens - 1) ** 0.5))
    return F.normalize(v, dim=-1).reshape(batch, side, side, -1)


def published_lposs_plus(clip, dino, image: torch.Tensor, text, timings: dict | None = None) -> torch.Tensor:
    """LPOSS+ the published code's way, moved to the CPU: both networks' passes as above, the
    patch graph by numpy top-k (faiss there) and scipy, the pixel graph by index lists and scipy
    CSR, and one float64 scipy CG per score column in both stages. The glue the two ways share
    (window placement, merging, synonym max) is the project's.

    ``image`` (3, H, W) float at the working size, ``text`` the class list's TextEmbeddings.
    Returns the (num_classes, H, W) scores; ``timings`` gets the seconds of each stage.
    """
    import time

    from segmentation.preprocess import window_boxes
    from segmentation.stages import merge_windows

    timings = {} if timings is None else timings
    height, width = image.shape[1:]
    boxes = window_boxes(height, width, 224, 112)
    windows = torch.stack([image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
    start = time.perf_counter()
    with torch.inference_mode():
        vlm = published_maskclip(clip, windows)  # (n, 14, 14, 512)
        timings["vlm"] = time.perf_counter() - start
        start = time.perf_counter()
        vm = published_dino(dino, windows)  # (n, 14, 14, 768)
        timings["vm"] = time.perf_counter() - start
    start = time.perf_counter()
    initial = vlm @ text.embeddings.T  # (n, 14, 14, E)
    n, gh, gw, e = initial.shape
    grid = torch.stack(torch.meshgrid(8.0 + 16 * torch.arange(gh), 8.0 + 16 * torch.arange(gw), indexing="ij"), -1)
    centres = torch.cat([grid.reshape(-1, 2) + torch.tensor([y1, x1]) for y1, _, x1, _ in boxes])
    z = baseline_solve(baseline_patch_graph(vm.reshape(n * gh * gw, -1), centres),
                       initial.reshape(-1, e).double().numpy())
    z = torch.from_numpy(z).float().reshape(n, gh, gw, e).permute(0, 3, 1, 2)
    merged = merge_windows(z, boxes, (height, width))
    timings["patch propagation"] = time.perf_counter() - start
    start = time.perf_counter()
    lab = rgb_to_lab(image) / torch.tensor(LAB_SCALE).view(3, 1, 1)
    z = baseline_solve(baseline_pixel_build(lab), merged.reshape(e, -1).T.numpy())
    scores = torch.from_numpy(z).float().T.reshape(e, height, width)
    timings["pixel propagation"] = time.perf_counter() - start
    index = text.class_index
    return torch.stack([scores[index == c].amax(dim=0) for c in range(text.num_classes)])
