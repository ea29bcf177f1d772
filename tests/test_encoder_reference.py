"""Encoders' dense features against an independent, step-by-step reference.

The reference below rebuilds each encoder's output from the wrapped model's ``state_dict()``
alone, with explicit tensor arithmetic in float64: zero padding by slice assignment, the patch
embedding as ``F.unfold`` + a matmul (no conv), layer norm from its formula, attention as explicit
``q k^T / sqrt(d)`` + a max-shifted softmax, exact GELU through ``torch.erf``. No module of the
model (block, attention, layer norm, conv, linear) is ever called; only its weights and a few
configuration values (head count, layer-norm eps, prefix-token count, native grid, whether layer
scale exists) are read. The only library call shared with the models is ``F.interpolate`` for the
positional-embedding resize, whose exact arguments are part of the contract.

The random initialisations leave layer-norm affines at (1, 0), most biases at 0 and DINOv2 layer
scales at 1e-5, which would let wrong bias rows, a missing layer norm affine or a skipped layer
scale go unnoticed; every test therefore first perturbs those parameters (and scales up the
positional embeddings and prefix tokens so that the positional-embedding resize visibly matters)
before the first call to ``dense_features``.
"""

from __future__ import annotations

import math
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

import encoders

TOL = 1e-4  # features are unit vectors; float32 implementation vs float64 reference

# Normalisation constants, written out here rather than read from the encoder or the library.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Reference arithmetic (float64, explicit)
# --------------------------------------------------------------------------------------------


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)  # biased variance, as LayerNorm
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = torch.matmul(x, weight.T)
    return y if bias is None else y + bias


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    shifted = scores - scores.amax(dim=-1, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=-1, keepdim=True)


def _attention(x, w_qkv, b_qkv, w_out, b_out, heads: int) -> torch.Tensor:
    """Multi-head self-attention with q, k, v packed as rows [q; k; v] of one (3D, D) matrix."""
    b, n, d = x.shape
    hd = d // heads
    qkv = _linear(x, w_qkv, b_qkv)
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]

    def split(t):  # (B, N, D) -> (B, heads, N, hd), heads in their natural order
        return t.reshape(b, n, heads, hd).permute(0, 2, 1, 3)

    probs = _softmax(torch.matmul(split(q), split(k).transpose(-1, -2)) / math.sqrt(hd))
    out = torch.matmul(probs, split(v)).permute(0, 2, 1, 3).reshape(b, n, d)
    return _linear(out, w_out, b_out)


def _pad_and_normalise(images: torch.Tensor, p: int, mean, std):
    """Zero-pad at bottom/right to a multiple of p, then (x - mean) / std per channel."""
    b, c, height, width = images.shape
    h, w = -(-height // p), -(-width // p)
    padded = torch.zeros(b, c, h * p, w * p, dtype=torch.float64)
    padded[:, :, :height, :width] = images.double()
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    return (padded - mean_t) / std_t, h, w


def _patch_embed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: int) -> torch.Tensor:
    """Non-overlapping p x p patches, row-major over the grid: (B, h*w, D)."""
    cols = F.unfold(x, kernel_size=p, stride=p)  # (B, 3*p*p, L), channel-major like the conv weight
    return _linear(cols.transpose(1, 2), weight.reshape(weight.shape[0], -1), bias)


def _resize_patch_pos(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], antialias: bool) -> torch.Tensor:
    """Patch positional embeddings (gh*gw, D) resized to (h*w, D); unchanged at the native grid."""
    if tuple(old) == tuple(new):
        return pos
    d = pos.shape[-1]
    grid = pos.reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new), mode="bicubic", align_corners=False, antialias=antialias)
    return grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], d)


def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True))


def _double_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float64).clone() for k, v in module.state_dict().items()}


def reference_maskclip(visual, images: torch.Tensor, pos_antialias: bool = False) -> torch.Tensor:
    """MaskCLIP dense features of an open_clip VisionTransformer, from its weights only."""
    sd = _double_state(visual)
    blocks = visual.transformer.resblocks
    p = int(sd["conv1.weight"].shape[-1])
    gh, gw = (int(s) for s in visual.grid_size)

    x, h, w = _pad_and_normalise(images, p, CLIP_MEAN, CLIP_STD)
    bsz = x.shape[0]
    tokens = _patch_embed(x, sd["conv1.weight"], None, p)  # conv1 has no bias
    cls = sd["class_embedding"].reshape(1, 1, -1).expand(bsz, 1, -1)
    tokens = torch.cat([cls, tokens], dim=1)
    pos = sd["positional_embedding"]
    pos = torch.cat([pos[:1], _resize_patch_pos(pos[1:], (gh, gw), (h, w), pos_antialias)], dim=0)
    x = tokens + pos.unsqueeze(0)
    x = _layer_norm(x, sd["ln_pre.weight"], sd["ln_pre.bias"], visual.ln_pre.eps)

    def mlp(t, pre):
        hidden = _gelu(_linear(t, sd[pre + "mlp.c_fc.weight"], sd[pre + "mlp.c_fc.bias"]))
        return _linear(hidden, sd[pre + "mlp.c_proj.weight"], sd[pre + "mlp.c_proj.bias"])

    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        pre = f"transformer.resblocks.{i}."
        y = _layer_norm(x, sd[pre + "ln_1.weight"], sd[pre + "ln_1.bias"], block.ln_1.eps)
        w_in, b_in = sd[pre + "attn.in_proj_weight"], sd[pre + "attn.in_proj_bias"]
        w_out, b_out = sd[pre + "attn.out_proj.weight"], sd[pre + "attn.out_proj.bias"]
        if i < last:
            x = x + _attention(y, w_in, b_in, w_out, b_out, block.attn.num_heads)
        else:  # value path only: no attention mixing in the last block
            d = x.shape[-1]
            v = _linear(y, w_in[2 * d :], b_in[2 * d :])
            x = x + _linear(v, w_out, b_out)
        x = x + mlp(_layer_norm(x, sd[pre + "ln_2.weight"], sd[pre + "ln_2.bias"], block.ln_2.eps), pre)

    x = x[:, 1:]  # drop CLS
    x = _layer_norm(x, sd["ln_post.weight"], sd["ln_post.bias"], visual.ln_post.eps)
    x = torch.matmul(x, sd["proj"])
    return _l2_normalise(x).reshape(bsz, h, w, -1)


def reference_timm(model, images: torch.Tensor, feature: str, pos_antialias: bool = True) -> torch.Tensor:
    """Dense q/k/v/x features of the last block of a timm VisionTransformer, from its weights only."""
    sd = _double_state(model)
    p = int(sd["patch_embed.proj.weight"].shape[-1])
    gh, gw = (int(s) for s in model.patch_embed.grid_size)
    n_prefix = int(model.num_prefix_tokens)

    x, h, w = _pad_and_normalise(images, p, IMAGENET_MEAN, IMAGENET_STD)
    bsz = x.shape[0]
    patches = _patch_embed(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], p)
    prefix = []
    if "cls_token" in sd:
        prefix.append(sd["cls_token"].expand(bsz, -1, -1))
    if "reg_token" in sd:
        prefix.append(sd["reg_token"].expand(bsz, -1, -1))
    assert sum(t.shape[1] for t in prefix) == n_prefix

    pos = sd["pos_embed"][0]
    if model.no_embed_class:
        # pos_embed covers the patches only (DINOv2 with registers): add to the patches, then
        # prepend CLS and register tokens without any positional term.
        pos = _resize_patch_pos(pos, (gh, gw), (h, w), pos_antialias)
        x = torch.cat(prefix + [patches + pos.unsqueeze(0)], dim=1)
    else:
        # pos_embed has one entry per prefix token first (DINO v1: the CLS token), kept as is.
        pos = torch.cat([pos[:n_prefix], _resize_patch_pos(pos[n_prefix:], (gh, gw), (h, w), pos_antialias)], dim=0)
        x = torch.cat(prefix + [patches], dim=1) + pos.unsqueeze(0)

    def scale(t, key):  # LayerScale where the block has one
        return t * sd[key] if key in sd else t

    blocks = model.blocks
    for i, block in enumerate(blocks):
        pre = f"blocks.{i}."
        y = _layer_norm(x, sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], block.norm1.eps)
        if i == len(blocks) - 1 and feature in ("q", "k", "v"):
            d = x.shape[-1]
            j = "qkv".index(feature)
            out = _linear(y, sd[pre + "attn.qkv.weight"][j * d : (j + 1) * d],
                          sd[pre + "attn.qkv.bias"][j * d : (j + 1) * d])
            return _l2_normalise(out[:, n_prefix:]).reshape(bsz, h, w, -1)
        attn = _attention(
            y, sd[pre + "attn.qkv.weight"], sd[pre + "attn.qkv.bias"],
            sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"], block.attn.num_heads,
        )
        x = x + scale(attn, pre + "ls1.gamma")
        y = _layer_norm(x, sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], block.norm2.eps)
        hidden = _gelu(_linear(y, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"]))
        x = x + scale(_linear(hidden, sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"]), pre + "ls2.gamma")
    assert feature == "x"
    return _l2_normalise(x[:, n_prefix:]).reshape(bsz, h, w, -1)


# --------------------------------------------------------------------------------------------
# Model set-up
# --------------------------------------------------------------------------------------------


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move the parameters that random init leaves trivial (LN affine at (1, 0), zero biases,
    layer scale 1e-5, tiny positional embeddings / prefix tokens) to generic values."""
    g = torch.Generator().manual_seed(seed)

    def randn(p):
        return torch.randn(p.shape, generator=g, dtype=p.dtype)

    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma":
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
            elif leaf in ("positional_embedding", "class_embedding", "pos_embed", "cls_token", "reg_token"):
                p.copy_(0.5 * randn(p))
            elif leaf == "bias":
                p.add_(0.1 * randn(p))
            elif leaf == "weight" and p.ndim == 1:  # layer-norm scale
                p.copy_(1.0 + 0.2 * randn(p))


def _check_clip_preconditions(enc) -> None:
    """The configuration facts the reference relies on (read, not computed)."""
    visual = enc.model.visual
    assert enc.patch_size == visual.conv1.weight.shape[-1]
    assert enc.mean == pytest.approx(CLIP_MEAN) and enc.std == pytest.approx(CLIP_STD)
    assert visual.conv1.bias is None
    for block in visual.transformer.resblocks:
        assert isinstance(block.ls_1, torch.nn.Identity) and isinstance(block.ls_2, torch.nn.Identity)
        assert isinstance(block.mlp.gelu, torch.nn.GELU) and block.mlp.gelu.approximate == "none"


def _check_timm_preconditions(enc) -> None:
    model = enc.model
    assert tuple(model.pretrained_cfg["mean"]) == pytest.approx(IMAGENET_MEAN)
    assert tuple(model.pretrained_cfg["std"]) == pytest.approx(IMAGENET_STD)
    assert isinstance(model.norm_pre, torch.nn.Identity)
    assert isinstance(model.patch_embed.norm, torch.nn.Identity)
    for block in model.blocks:
        assert isinstance(block.attn.q_norm, torch.nn.Identity) and isinstance(block.attn.k_norm, torch.nn.Identity)
        assert isinstance(block.attn.norm, torch.nn.Identity) and isinstance(block.mlp.norm, torch.nn.Identity)
        assert isinstance(block.mlp.act, torch.nn.GELU) and block.mlp.act.approximate == "none"


def _build_clip(name: str, seed: int):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights.*")
        enc = encoders.OpenCLIPEncoder(name, pretrained=None, device="cpu")
    enc.model.eval()
    _perturb(enc.model.visual, seed + 1)
    _check_clip_preconditions(enc)
    return enc


def _build_timm(name: str, seed: int, feature: str, **model_kwargs):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights.*")
        enc = encoders.TimmViTEncoder(
            name, pretrained=None, feature=feature, device="cpu", model_kwargs=model_kwargs or None
        )
    enc.model.eval()
    _perturb(enc.model, seed + 1)
    _check_timm_preconditions(enc)
    return enc


def _images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=g)


def _dense(enc, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = enc.dense_features(images)
    return out.detach()


def _assert_matches(out: torch.Tensor, ref: torch.Tensor, patch: int, height: int, width: int) -> None:
    b = ref.shape[0]
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (b, -(-height // patch), -(-width // patch), ref.shape[-1])
    diff = (out.double() - ref).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.3e} > {TOL:g}"


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_configs):
    return _build_clip(tiny_clip_configs[0], seed=0)


@pytest.fixture(scope="module")
def clip_b16():
    return _build_clip("ViT-B-16", seed=10)


class _PerFeature(dict):
    """One encoder per feature (the feature is chosen at construction), built on first use."""

    def __init__(self, name: str, seed: int, **model_kwargs):
        super().__init__()
        self.args = name, seed, model_kwargs

    def __missing__(self, feature: str):
        name, seed, model_kwargs = self.args
        self[feature] = enc = _build_timm(name, seed, feature, **model_kwargs)
        return enc


@pytest.fixture(scope="module")
def dino_s3():
    return _PerFeature("vit_small_patch16_224.dino", seed=20, depth=3)


@pytest.fixture(scope="module")
def dinov2_reg_s3():
    return _PerFeature("vit_small_patch14_reg4_dinov2", seed=30, depth=3)


# --------------------------------------------------------------------------------------------
# open_clip (MaskCLIP)
# --------------------------------------------------------------------------------------------


def test_open_clip_random_init_warns(tiny_clip_configs):
    """pretrained=None is allowed but must say so: a UserWarning mentioning random weights."""
    with pytest.warns(UserWarning, match="random weights"):
        encoders.OpenCLIPEncoder(tiny_clip_configs[0], pretrained=None, device="cpu")


@pytest.mark.parametrize(
    "height, width",
    [(64, 64), (48, 80), (50, 70)],
    ids=["native-4x4", "resized-3x5", "padded-50x70"],
)
def test_open_clip_tiny_matches_reference(tiny_clip, height, width):
    """The tiny ViT (4x4 native grid) equals the explicit MaskCLIP computation for a batch of 2:
    at the native grid (positional embedding used as is), at 48x80 (a 3x5 grid: bicubic resize
    without antialias of the patch positions, CLS kept) and at 50x70 (zero padding to 64x80 before
    normalisation, so padded pixels carry -mean/std). The reference reads only the weights, so a
    match up to float32 rounding means the encoder follows the definition step by step."""
    images = _images(2, height, width, seed=height * 1000 + width)
    out = _dense(tiny_clip, images)
    ref = reference_maskclip(tiny_clip.model.visual, images)
    _assert_matches(out, ref, 16, height, width)


@pytest.mark.parametrize("height, width", [(224, 224), (160, 224)], ids=["native-224", "resized-160x224"])
def test_open_clip_vit_b16_matches_reference(clip_b16, height, width):
    """The published ViT-B-16 architecture (12 blocks, 12 heads, width 768 -> embed 512) with
    random weights equals the explicit MaskCLIP computation at its native 14x14 grid and at a
    10x14 grid that needs the positional embedding resized."""
    images = _images(1, height, width, seed=height + width)
    out = _dense(clip_b16, images)
    ref = reference_maskclip(clip_b16.model.visual, images)
    _assert_matches(out, ref, 16, height, width)


def test_open_clip_reference_is_discriminating(tiny_clip):
    """Guard against a vacuous pass: with the perturbed weights, resizing the positional embedding
    with antialias (timm's rule instead of MaskCLIP's) moves the features far beyond the
    tolerance, so the comparisons above do pin the resize down."""
    images = _images(2, 48, 80, seed=7)
    out = _dense(tiny_clip, images)
    wrong = reference_maskclip(tiny_clip.model.visual, images, pos_antialias=True)
    assert (out.double() - wrong).abs().max().item() > 100 * TOL


# --------------------------------------------------------------------------------------------
# timm ViTs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("feature", ["q", "k", "v", "x"])
@pytest.mark.parametrize("height, width", [(224, 224), (96, 160), (100, 150)],
                         ids=["native-224", "resized-96x160", "padded-100x150"])
def test_timm_dino_matches_reference(dino_s3, feature, height, width):
    """A 3-block DINO ViT-S/16 (one CLS prefix token whose positional entry is kept, no layer
    scale) equals the explicit computation for each feature: the q/k/v third of the last block's
    qkv projection of norm1(x), or the last block's output; CLS dropped, unit length. 224 uses the
    native 14x14 positional embedding as is, 96x160 a 6x10 grid (bicubic, antialiased resize of
    the patch part), 100x150 zero padding to 112x160."""
    images = _images(2, height, width, seed=height * 7 + width)
    enc = dino_s3[feature]
    out = _dense(enc, images)
    ref = reference_timm(enc.model, images, feature)
    _assert_matches(out, ref, 16, height, width)


@pytest.mark.parametrize("feature", ["q", "k", "v", "x"])
@pytest.mark.parametrize("height, width", [(98, 140), (100, 150)], ids=["resized-98x140", "padded-100x150"])
def test_timm_dinov2_registers_matches_reference(dinov2_reg_s3, feature, height, width):
    """A 3-block DINOv2 ViT-S/14 with 4 register tokens (5 prefix tokens, a positional embedding
    for the patches only, added before CLS and registers are prepended; layer scale in every
    block) equals the explicit computation. The native grid is 37x37 (518 px), so both sizes
    (7x10; 8x11 after zero padding to 112x154) go through the antialiased bicubic resize."""
    images = _images(2, height, width, seed=height * 11 + width)
    enc = dinov2_reg_s3[feature]
    out = _dense(enc, images)
    ref = reference_timm(enc.model, images, feature)
    _assert_matches(out, ref, 14, height, width)


def test_timm_vit_base_dino_matches_reference():
    """The published DINO ViT-B/16 (12 blocks, 12 heads, width 768) with random weights equals the
    explicit computation of the last block's value features at 224 px."""
    enc = _build_timm("vit_base_patch16_224.dino", seed=40, feature="v")
    images = _images(1, 224, 224, seed=224)
    out = _dense(enc, images)
    ref = reference_timm(enc.model, images, "v")
    _assert_matches(out, ref, 16, 224, 224)


def test_timm_reference_is_discriminating(dinov2_reg_s3):
    """Guard against a vacuous pass: resizing the positional embedding without antialias
    (MaskCLIP's rule instead of timm's) changes the DINOv2 features far beyond the tolerance."""
    images = _images(2, 98, 140, seed=3)
    enc = dinov2_reg_s3["x"]
    out = _dense(enc, images)
    wrong = reference_timm(enc.model, images, "x", pos_antialias=False)
    assert (out.double() - wrong).abs().max().item() > 100 * TOL


# --------------------------------------------------------------------------------------------
# timm DINOv3 (Eva with rotary position embeddings)
# --------------------------------------------------------------------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension (the half-split rotation DINOv3 uses)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _rope(t: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """RoPE on the patch tokens of (B, heads, N, hd); the prefix tokens are left as they are."""
    patches = t[:, :, n_prefix:]
    return torch.cat([t[:, :, :n_prefix], patches * cos + _rotate_half(patches) * sin], dim=2)


def reference_dinov3(model, images: torch.Tensor, feature: str, rope_on_last: bool = False) -> torch.Tensor:
    """Dense features of the last block of a timm DINOv3 (``Eva``), from its weights only.

    No positional embedding is added; every block's attention rotates q and k of the patch tokens
    by RoPE, ``t * cos + rotate_half(t) * sin``, with the sin/cos table read from the model's
    ``rope.get_embed`` for the patch grid (configuration, like the DINO positional embedding).
    The q/k/v features are the last block's ``qkv`` projection of ``norm1(x)`` **before** RoPE
    (``rope_on_last=True`` applies it, to show the difference). Layer scale is ``gamma_1/2``.
    """
    sd = _double_state(model)
    p = int(sd["patch_embed.proj.weight"].shape[-1])
    n_prefix = int(model.num_prefix_tokens)
    x, h, w = _pad_and_normalise(images, p, IMAGENET_MEAN, IMAGENET_STD)
    bsz = x.shape[0]
    patches = _patch_embed(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], p)
    prefix = [sd["cls_token"].expand(bsz, -1, -1), sd["reg_token"].expand(bsz, -1, -1)]
    assert sum(t.shape[1] for t in prefix) == n_prefix and "pos_embed" not in sd
    x = torch.cat(prefix + [patches], dim=1)
    sin, cos = model.rope.get_embed(shape=(h, w)).detach().double().chunk(2, dim=-1)  # (h*w, hd) each

    blocks = model.blocks
    d = x.shape[-1]
    for i, block in enumerate(blocks):
        pre = f"blocks.{i}."
        heads = block.attn.num_heads
        hd = d // heads
        y = _layer_norm(x, sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], block.norm1.eps)
        qkv = _linear(y, sd[pre + "attn.qkv.weight"], None)  # DINOv3 S/16: no qkv bias
        n = qkv.shape[1]
        q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(bsz, n, heads, hd).permute(0, 2, 1, 3) for j in range(3))
        if i == len(blocks) - 1 and feature in ("q", "k", "v"):
            t = {"q": q, "k": k, "v": v}[feature]
            if rope_on_last and feature != "v":
                t = _rope(t, sin, cos, n_prefix)
            out = t.permute(0, 2, 1, 3).reshape(bsz, n, d)  # heads concatenated in order
            return _l2_normalise(out[:, n_prefix:]).reshape(bsz, h, w, -1)
        q, k = _rope(q, sin, cos, n_prefix), _rope(k, sin, cos, n_prefix)
        probs = _softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd))
        attn = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(bsz, n, d)
        attn = _linear(attn, sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
        x = x + attn * sd[pre + "gamma_1"]
        y = _layer_norm(x, sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], block.norm2.eps)
        hidden = _gelu(_linear(y, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"]))
        x = x + _linear(hidden, sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"]) * sd[pre + "gamma_2"]
    assert feature == "x"
    return _l2_normalise(x[:, n_prefix:]).reshape(bsz, h, w, -1)


def _build_dinov3(feature: str, seed: int = 50):
    """A random 2-block ``vit_small_patch16_dinov3`` (CLS + 4 registers, RoPE, layer scale),
    perturbed so that layer scale (1e-5 at init), norms and biases all matter."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights.*")
        enc = encoders.TimmViTEncoder("vit_small_patch16_dinov3", pretrained=None, feature=feature, device="cpu",
                                      model_kwargs={"depth": 2})
    model = enc.model.eval()
    _perturb(model, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for block in model.blocks:
            for gamma in (block.gamma_1, block.gamma_2):
                gamma.copy_(0.5 + torch.rand(gamma.shape, generator=g))
    assert type(model).__name__ == "Eva" and model.num_prefix_tokens == 5 and model.pos_embed is None
    for block in model.blocks:
        attn = block.attn
        assert attn.qkv.bias is None and attn.q_bias is None and attn.rotate_half
        assert isinstance(attn.q_norm, torch.nn.Identity) and isinstance(attn.k_norm, torch.nn.Identity)
        assert isinstance(attn.norm, torch.nn.Identity) and isinstance(block.mlp.act, torch.nn.GELU)
        assert block.mlp.act.approximate == "none"
    assert isinstance(model.norm_pre, torch.nn.Identity) and isinstance(model.patch_embed.norm, torch.nn.Identity)
    assert enc.mean == pytest.approx(IMAGENET_MEAN) and enc.std == pytest.approx(IMAGENET_STD)
    return enc


@pytest.fixture(scope="module")
def dinov3_s2():
    return {feature: _build_dinov3(feature) for feature in ("q", "k", "v", "x")}


@pytest.mark.parametrize("feature", ["q", "k", "v", "x"])
@pytest.mark.parametrize("height, width", [(64, 80), (70, 90)], ids=["64x80", "padded-70x90"])
def test_timm_dinov3_matches_reference(dinov3_s2, feature, height, width):
    """``timm:vit_small_patch16_dinov3`` (random weights, 2 blocks) equals the explicit
    computation: RoPE in every block's attention, q/k/v read from the last block's projection
    before RoPE, the 5 prefix tokens (CLS + 4 registers) dropped."""
    images = _images(2, height, width, seed=height * 13 + width)
    enc = dinov3_s2[feature]
    out = _dense(enc, images)
    ref = reference_dinov3(enc.model, images, feature)
    _assert_matches(out, ref, 16, height, width)


@pytest.mark.parametrize("feature", ["q", "k"])
def test_timm_dinov3_qk_are_read_before_rope(dinov3_s2, feature):
    """Not vacuous: the same q/k with RoPE applied (as attention sees them) differ far beyond the
    tolerance, so the match above pins the pre-RoPE reading."""
    images = _images(1, 64, 80, seed=5)
    enc = dinov3_s2[feature]
    out = _dense(enc, images)
    rotated = reference_dinov3(enc.model, images, feature, rope_on_last=True)
    assert (out.double() - rotated).abs().max().item() > 100 * TOL
