"""The whole LPOSS+ pipeline on the synthetic 448 x 597 photo with VOC's class list (published
architectures, random weights), text already known, and where its time goes per stage."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from benchmarks.workloads import VOC_CLASSES, synthetic_photo
from encoders import OpenCLIPEncoder, TimmViTEncoder
from segmentation import LPOSS

warnings.filterwarnings("ignore", message=".*random weights.*")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    vlm = OpenCLIPEncoder("ViT-B-16", pretrained=None, device="cpu", text_cache=False, progress=False)
    lposs = LPOSS(vlm, TimmViTEncoder("vit_base_patch16_224.dino", pretrained=None, device="cpu"))
    lposs.vlm.encode_text(list(VOC_CLASSES))  # text known, as in an evaluation
    return lposs


def test_lposs_plus_text_known(benchmark, model):
    image = synthetic_photo()  # (3, 448, 597) float, already at the working size
    stages = {}

    def run():
        start = time.perf_counter()
        features = model.encode(image)
        stages.update(features.timings)
        middle = time.perf_counter()
        scores = model.predict(features, list(VOC_CLASSES))
        stages["text + propagation"] = time.perf_counter() - middle
        stages["total"] = time.perf_counter() - start
        return scores

    scores = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)
    assert scores.shape == (21, 448, 597)
    benchmark.extra_info.update({f"seconds_{k}": round(v, 3) for k, v in stages.items()})
