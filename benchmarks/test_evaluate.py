"""``lposs evaluate --random-init`` on a small generated dataset in VOC's layout: images per second
and where the time goes, per stage (published architectures with random weights)."""

from __future__ import annotations

import json

import pytest

from segmentation import cli
from segmentation.datasets import write_synthetic_dataset

IMAGES = 6
SIZE = (375, 500)  # VOC's most common image size


@pytest.mark.parametrize("method", ["lposs+", "lposs"])
def test_evaluate_images_per_second(benchmark, tmp_path, monkeypatch, method):
    monkeypatch.setenv("LPOSS_CACHE_DIR", str(tmp_path / "cache"))  # text from scratch, once per run
    write_synthetic_dataset("voc", tmp_path, count=IMAGES, size=SIZE)
    out = tmp_path / "results.json"
    args = ["evaluate", "--dataset", "voc", "--data-root", str(tmp_path), "--method", method, "--random-init",
            "--device", "cpu", "--output", str(out), "--measure-boundary"]
    assert benchmark.pedantic(cli.main, args=(args,), rounds=1, iterations=1) == 0
    result = json.loads(out.read_text())
    seconds = result["seconds"]
    per_image = {k: v for k, v in seconds.items() if k != "text"}
    total = sum(per_image.values())
    benchmark.extra_info.update(
        images=result["evaluated"], images_per_second=round(result["images_per_second"], 4),
        text_seconds=seconds["text"],  # (the JSON's peak memory is this whole pytest process's here)
        **{f"share_{k}": round(v / total, 3) for k, v in per_image.items()},
    )
    print(f"\n{method}: {result['images_per_second']:.3f} images/s, text once {seconds['text']:.1f} s, shares: "
          + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(per_image.items(), key=lambda kv: -kv[1])))
