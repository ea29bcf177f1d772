"""The whole LPOSS+ pipeline, ours against the published code's way moved to this CPU, in the same run.

The synthetic 448 x 597 photo (already at the working size: 15 windows), VOC's class list (21
classes, 46 text embeddings), the published architectures with random weights (the cost does not
depend on the weights' values). Baseline: ``workloads.published_lposs_plus`` (whole network passes
with hooks, numpy top-k + scipy patch graph, index-list pixel graph, one float64 scipy CG per
column) and, for a never-seen class list, the text at open_clip's full 77-token context.

- ``test_lposs_plus_text_known``: text already encoded, as in an evaluation; ``ours-bf16``: both
  networks (and the text tower) in bf16, the same weights rounded, labels checked against ours in fp32;
- ``test_lposs_plus_never_seen``: text included, nothing cached;
- ``test_lposs_plus_peak_memory``: peak resident memory in a fresh process.
"""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from benchmarks.workloads import VOC_CLASSES, peak_memory_mb, published_lposs_plus, synthetic_photo
from encoders import OpenCLIPEncoder, TimmViTEncoder
from segmentation import LPOSS
from segmentation.pipeline import StageTimer

warnings.filterwarnings("ignore", message=".*random weights.*")

RESULTS: dict[str, torch.Tensor] = {}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    vlm = OpenCLIPEncoder("ViT-B-16", pretrained=None, device="cpu", text_cache=False, progress=False)
    return LPOSS(vlm, TimmViTEncoder("vit_base_patch16_224.dino", pretrained=None, device="cpu"))


@pytest.fixture(scope="module")
def model_bf16(model):
    """The same model with both networks in bf16 (the fp32 weights rounded)."""
    vlm = OpenCLIPEncoder("ViT-B-16", pretrained=None, device="cpu", text_cache=False, progress=False,
                          precision="bf16")
    vlm.model.load_state_dict(model.vlm.model.state_dict())
    vm = TimmViTEncoder("vit_base_patch16_224.dino", pretrained=None, device="cpu", precision="bf16")
    vm.model.load_state_dict(model.vm.model.state_dict())
    vlm.encode_text(list(VOC_CLASSES))  # text known, as for fp32
    return LPOSS(vlm, vm, model.config)


@pytest.fixture(scope="module")
def image():
    return synthetic_photo()  # (3, 448, 597) float, already at the working size


@pytest.fixture(scope="module")
def text(model):
    return model.vlm.encode_text(list(VOC_CLASSES))  # also fills the encoder's memory cache


def _ours(model, image, stages):
    """One image; ``stages`` gets this round's seconds per stage (the last round's are reported)."""
    stages.clear()
    start = time.perf_counter()
    timer = StageTimer(stages)
    scores = model.predict(image, list(VOC_CLASSES), on_stage=timer)
    timer.stop()
    stages["total"] = time.perf_counter() - start
    return scores


def _published(model, image, text, stages):
    start = time.perf_counter()
    scores = published_lposs_plus(model.vlm, model.vm, image, text, stages)
    stages["total"] = time.perf_counter() - start
    return scores


def _record(benchmark, impl, scores, stages):
    benchmark.extra_info.update({f"seconds_{k}": round(v, 3) for k, v in stages.items()})
    RESULTS[impl] = scores
    if impl == "ours-bf16":  # bf16 networks: nearly the same labels as fp32
        exact = RESULTS["ours"]
        agree = (scores.argmax(0) == exact.argmax(0)).double().mean().item()
        benchmark.extra_info["label_agreement_with_fp32"] = agree
        benchmark.extra_info["max_abs_score_difference_to_fp32"] = (scores - exact).abs().max().item()
        print(f"\nbf16 vs fp32: labels agree on {agree:.4%} of pixels")
        assert agree >= 0.99
    elif {"ours", "published"} <= RESULTS.keys():  # the same result: float rounding (float32 pixel stage)
        ours, published = RESULTS["ours"], RESULTS["published"]
        rel = ((ours - published).abs().max() / published.abs().max()).item()
        agree = (ours.argmax(0) == published.argmax(0)).double().mean().item()
        benchmark.extra_info["max_relative_difference_to_published"] = rel
        benchmark.extra_info["label_agreement"] = agree
        print(f"\nours vs published: max relative difference {rel:.2e}, labels agree on {agree:.4%} of pixels")
        assert rel < 1e-4


@pytest.mark.parametrize("impl", ["published", "ours", "ours-bf16"])
def test_lposs_plus_text_known(benchmark, model, image, text, impl, request):
    stages: dict[str, float] = {}
    if impl == "published":
        scores = benchmark.pedantic(_published, args=(model, image, text, stages), rounds=1, iterations=1)
    else:
        if impl == "ours-bf16" and "ours" not in RESULTS:
            RESULTS["ours"] = _ours(model, image, {})  # the fp32 labels to compare with (run alone: -k bf16)
        chosen = request.getfixturevalue("model_bf16") if impl == "ours-bf16" else model
        scores = benchmark.pedantic(_ours, args=(chosen, image, stages), rounds=2, iterations=1, warmup_rounds=1)
    assert scores.shape == (21, 448, 597)
    _record(benchmark, impl, scores, stages)


@pytest.mark.parametrize("impl", ["published", "ours"])
def test_lposs_plus_never_seen(benchmark, model, image, impl):
    """Text included, nothing cached: 3,680 prompts, then the pipeline."""
    stages: dict[str, float] = {}

    def run():
        model.vlm._cache = None  # forget every class list
        if impl == "ours":
            return _ours(model, image, stages)
        truncate, model.vlm.truncate_text = model.vlm.truncate_text, False  # the full 77-token context
        try:
            start = time.perf_counter()
            text = model.vlm.encode_text(list(VOC_CLASSES))
            stages["text"] = time.perf_counter() - start
        finally:
            model.vlm.truncate_text = truncate
        scores = _published(model, image, text, stages)
        stages["total"] += stages["text"]
        return scores

    scores = benchmark.pedantic(run, rounds=1, iterations=1)
    assert scores.shape == (21, 448, 597) and model.vlm.truncate_text  # ours: the truncated pass
    benchmark.extra_info.update({f"seconds_{k}": round(v, 3) for k, v in stages.items()})


SETUP = """
import warnings
import torch
warnings.simplefilter("ignore")
from benchmarks.workloads import VOC_CLASSES, published_lposs_plus, synthetic_photo
from encoders import OpenCLIPEncoder, TimmViTEncoder
from segmentation import LPOSS
torch.manual_seed(0)
vlm = OpenCLIPEncoder("ViT-B-16", pretrained=None, device="cpu", text_cache=False, progress=False, templates=["{}"])
model = LPOSS(vlm, TimmViTEncoder("vit_base_patch16_224.dino", pretrained=None, device="cpu"))
image = synthetic_photo()
text = vlm.encode_text(list(VOC_CLASSES))  # known: in memory (one template: memory does not depend on it)
model.predict(torch.rand(3, 64, 64), "a,b")  # load the numba kernels
"""


@pytest.mark.parametrize("impl", ["published", "ours"])
def test_lposs_plus_peak_memory(benchmark, impl):
    """Peak resident memory of the whole process (weights, libraries and all) while one image runs,
    and what the run adds to the process after setup."""
    statement = ("published_lposs_plus(vlm, model.vm, image, text)" if impl == "published"
                 else "model.predict(image, list(VOC_CLASSES))")
    total = benchmark.pedantic(peak_memory_mb, args=(statement, SETUP, True), rounds=1, iterations=1)
    added = peak_memory_mb(statement, SETUP)
    benchmark.extra_info.update(peak_rss_mb=total, added_peak_mb=added)
    print(f"\n{impl}: peak resident memory {total:.0f} MiB, {added:.0f} MiB of it added by the run")
    if impl == "ours":
        assert total < 3 * 1024
