"""``segment_paths`` (what ``lposs segment`` runs) on 20 images: images per second with the windows
of several images in one network batch (``--batch-size 8``) against one image at a time, in the
same run (published architectures with random weights, LPOSS without the pixel stage, which does
not batch; the text is encoded before the clock starts).

- ``published``: the published settings on 224 x 224 images (resized to 448 x 448: 9 windows each);
- ``one-window``: ``short_side=224`` (one 224 x 224 window per image), where a batch of one
  image is one window and batching has the most to give.
"""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from PIL import Image

from benchmarks.workloads import synthetic_photo
from encoders import OpenCLIPEncoder, TimmViTEncoder
from segmentation import LPOSS, LPOSSConfig
from segmentation.batch import segment_paths

warnings.filterwarnings("ignore", message=".*random weights.*")

IMAGES = 20
CLASSES = ["building", "tree", "sky;cloud", "ground;road"]
WORKLOADS = {"published": {}, "one-window": {"short_side": 224}}


@pytest.fixture(scope="module")
def encoders_():
    torch.manual_seed(0)
    vlm = OpenCLIPEncoder("ViT-B-16", pretrained=None, device="cpu", text_cache=False, progress=False)
    return vlm, TimmViTEncoder("vit_base_patch16_224.dino", pretrained=None, device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i in range(IMAGES):
        image = (synthetic_photo(224, 224, seed=i) * 255).round().to(torch.uint8)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    return folder


def _images_per_second(model, photos, out, batch_size: int) -> float:
    start = time.perf_counter()
    results = list(segment_paths(model, [photos], CLASSES, out=out, skip_done=False, batch_size=batch_size))
    seconds = time.perf_counter() - start
    assert len(results) == IMAGES and all(r.status == "done" for r in results)
    return IMAGES / seconds


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_batch_images_per_second(benchmark, encoders_, photos, tmp_path, workload):
    model = LPOSS(*encoders_, LPOSSConfig(pixel_refine=False, **WORKLOADS[workload]))
    model.vlm.encode_text(CLASSES)  # the text once, before the clock (as in a run: once per run)
    rounds = 2 if workload == "one-window" else 1
    one, batched = [], []

    def baseline():  # before each timed round, untimed: both see the same machine load
        one.append(_images_per_second(model, photos, tmp_path / "one", 1))

    def batched_run():
        batched.append(_images_per_second(model, photos, tmp_path / "batched", 8))

    benchmark.pedantic(batched_run, setup=baseline, rounds=rounds, iterations=1)
    benchmark.extra_info.update(images=IMAGES, one_at_a_time_images_per_second=round(max(one), 3),
                                batch_8_images_per_second=round(max(batched), 3),
                                speed_up=round(max(batched) / max(one), 3))
    print(f"\n{workload}: one at a time {max(one):.3f} images/s, --batch-size 8 {max(batched):.3f} images/s "
          f"({max(batched) / max(one):.2f}x; best of {rounds})")
