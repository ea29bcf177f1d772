"""Encoders: VOC's class list through the CLIP text tower (truncated vs full context, cold and
cached), and CLIP / DINO dense features on 15 windows of 224 (ours vs the published code's way).

The published architectures with random weights (no weights can be downloaded here): the cost
does not depend on the weights' values.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from benchmarks.workloads import VOC_CLASSES, window_batch
from encoders import OpenCLIPEncoder, TimmViTEncoder
from encoders._text import split_class_names

warnings.filterwarnings("ignore", message=".*random weights.*")


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return OpenCLIPEncoder("ViT-B-16", pretrained=None, device="cpu", text_cache=False, progress=False)


@pytest.fixture(scope="module")
def dino():
    torch.manual_seed(0)
    return TimmViTEncoder("vit_base_patch16_224.dino", pretrained=None, device="cpu")


@pytest.fixture(scope="module")
def windows():
    return window_batch()


@pytest.fixture(scope="module")
def voc_embeddings():
    return {}


# --------------------------------------------------------------------------- text
@pytest.mark.parametrize("context", ["truncated", "full"])
def test_text_voc_never_seen(benchmark, clip, voc_embeddings, context):
    """46 synonyms x 80 templates = 3,680 prompts, nothing cached (each round starts empty)."""
    def run():
        clip.truncate_text = context == "truncated"
        clip._cache = None  # forget what earlier rounds remembered
        return clip.encode_text(list(VOC_CLASSES)).embeddings

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    clip.truncate_text = True
    voc_embeddings[context] = result
    benchmark.extra_info["prompts"] = len(split_class_names(VOC_CLASSES)[1]) * len(clip.templates)
    if len(voc_embeddings) == 2:
        difference = (voc_embeddings["truncated"] - voc_embeddings["full"]).abs().max().item()
        benchmark.extra_info["max_abs_difference_truncated_vs_full"] = difference
        assert difference <= 1e-5


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_text_voc_cached(benchmark, clip, tmp_path, cache):
    """The same class list again: from this process's memory, or from the disk file only."""
    clip._text_cache_dir = tmp_path
    clip._cache = None
    clip.encode_text(list(VOC_CLASSES))  # fills memory and the file

    def run():
        if cache == "disk":
            clip._cache = None  # a new process: nothing in memory, the file on disk
        return clip.encode_text(list(VOC_CLASSES))

    benchmark.pedantic(run, rounds=5, iterations=1)
    clip._text_cache_dir = None


# --------------------------------------------------------------------------- dense features
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


@pytest.mark.parametrize("impl", ["published", "encoders"])
@pytest.mark.parametrize("network", ["clip", "dino"])
def test_dense_features_15_windows(benchmark, clip, dino, windows, network, impl):
    encoder = clip if network == "clip" else dino
    published = published_maskclip if network == "clip" else published_dino

    def run():
        with torch.inference_mode():
            if impl == "published":
                return published(encoder, windows)
            return encoder.dense_features(windows)

    features = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    if impl == "encoders":
        with torch.inference_mode():
            difference = (features - published(encoder, windows)).abs().max().item()
        benchmark.extra_info["max_abs_difference_to_published"] = difference
        assert difference < 1e-4
