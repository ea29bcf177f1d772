"""Encoders: VOC's class list through the CLIP text tower (truncated vs full context, cold and
cached), and CLIP / DINO dense features on 15 windows of 224 (ours vs the published code's way;
ours in fp32 vs bf16, the same weights).

The published architectures with random weights (no weights can be downloaded here): the cost
does not depend on the weights' values.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from benchmarks.workloads import VOC_CLASSES, published_dino, published_maskclip, window_batch
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
def bf16(clip, dino):
    """The same two networks in bf16 (the fp32 weights rounded), end to end."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights.*")
        low_clip = OpenCLIPEncoder("ViT-B-16", pretrained=None, device="cpu", text_cache=False, progress=False,
                                   precision="bf16")
        low_dino = TimmViTEncoder("vit_base_patch16_224.dino", pretrained=None, device="cpu", precision="bf16")
    low_clip.model.load_state_dict(clip.model.state_dict())
    low_dino.model.load_state_dict(dino.model.state_dict())
    return {"clip": low_clip, "dino": low_dino}


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


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("network", ["clip", "dino"])
def test_dense_features_15_windows_precision(benchmark, clip, dino, bf16, windows, network, precision):
    """The same encoder in fp32 and bf16 (weights and activations), float32 features either way."""
    exact = clip if network == "clip" else dino
    encoder = exact if precision == "fp32" else bf16[network]
    features = benchmark.pedantic(encoder.dense_features, args=(windows,), rounds=3, iterations=1, warmup_rounds=1)
    assert features.dtype == torch.float32
    if precision == "bf16":
        reference = exact.dense_features(windows)
        cosine = F.cosine_similarity(features, reference, dim=-1)
        benchmark.extra_info["min_cosine_to_fp32"] = cosine.min().item()
        benchmark.extra_info["max_abs_difference_to_fp32"] = (features - reference).abs().max().item()
        assert cosine.min() > 0.999
