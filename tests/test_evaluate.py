"""``lposs evaluate`` end to end on generated datasets: JSON and predictions, skipped files, resume,
two processes under torchrun, bad input. Small encoders with random weights (a tiny open_clip ViT
and DINO ViT-S/16), so a run takes seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import interrupt_on_call
from segmentation import cli
from segmentation.datasets import DATASETS, write_synthetic_dataset
from segmentation.evaluation import loop

pytestmark = pytest.mark.usefixtures("quiet_random_init")

ROOT = Path(__file__).resolve().parents[1]
VM = "timm:vit_small_patch16_224.dino"


def _args(data_root, out, *extra, dataset="voc", vlm="open_clip:lposs-test-ViT-T-16"):
    return ["evaluate", "--dataset", dataset, "--data-root", str(data_root), "--vlm", vlm, "--vm", VM,
            "--random-init", "--device", "cpu", "--output", str(out), *extra]


def _miou_from_files(predictions: Path, data, num_classes: int) -> tuple[float, list]:
    """mIoU recomputed from the written prediction PNGs and the labels, numpy only."""
    intersection = np.zeros(num_classes)
    union = np.zeros(num_classes)
    for i, sample in enumerate(data):
        try:
            _, label = data.load(i)
        except ValueError:
            continue
        label = label.numpy()
        pred = np.asarray(Image.open(predictions / sample.folder / f"{sample.name}.png")).astype(np.int64)
        assert pred.shape == label.shape
        valid = label != 255
        for c in range(num_classes):
            p, g = (pred == c) & valid, (label == c) & valid
            intersection[c] += (p & g).sum()
            union[c] += (p | g).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersection / union * 100
    return float(np.nanmean(iou)), iou.tolist()


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    data = write_synthetic_dataset("voc", root, count=3, size=(40, 56))
    return root, data


@pytest.fixture(scope="module")
def full_run(voc, tmp_path_factory, tiny_clip_configs):
    root, data = voc
    out = tmp_path_factory.mktemp("full")
    status = cli.main(_args(root, out / "results.json", "--measure-boundary", "--save-predictions",
                            str(out / "predictions")))
    return status, out, json.loads((out / "results.json").read_text())


def test_evaluate_writes_results_and_predictions(voc, full_run, capsys):
    root, data = voc
    status, out, result = full_run
    assert status == 0
    assert result["dataset"] == "voc" and result["method"] == "lposs+" and result["random_init"]
    assert result["images"] == result["evaluated"] == 3 and result["skipped"] == 0
    assert list(result["per_class_iou"]) == [c.split(";")[0] for c in DATASETS["voc"].classes]
    assert result["config"]["k"] == 400 and result["config"]["pixel_refine"]
    assert {"torch", "python", "open_clip_torch", "timm"} <= set(result["versions"])
    assert result["images_per_second"] > 0 and result["peak_memory_mb"]["rss"] > 0
    assert {"text", "vlm", "vm", "patch propagation", "pixel propagation"} <= set(result["seconds"])
    assert 0 <= result["boundary_iou"] <= 100
    assert not (out / "results.json.partial").exists()  # the progress file is gone once done
    miou, per_class = _miou_from_files(out / "predictions", data, 21)
    assert result["miou"] == pytest.approx(miou, abs=1e-9)
    for name, iou in zip(result["per_class_iou"], per_class, strict=True):
        reported = result["per_class_iou"][name]
        assert (reported is None and np.isnan(iou)) or reported == pytest.approx(iou, abs=1e-9)
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (21, 21) and matrix.sum() > 0


def test_resume_after_an_interruption_gives_the_same_result(voc, full_run, tmp_path, monkeypatch):
    root, _ = voc
    out = tmp_path / "results.json"
    real = interrupt_on_call(monkeypatch, loop, "evaluate_sample")
    assert cli.main(_args(root, out, "--measure-boundary")) == 130
    state = tmp_path / "results.json.partial" / "rank0-of-1.pt"
    assert not out.exists() and state.is_file()
    import torch

    saved = torch.load(state, weights_only=False)
    assert len(saved["done"]) == 1 and saved["metrics"]["images"] == 1 and saved["timings"]["vlm"] > 0
    monkeypatch.setattr(loop, "evaluate_sample", real)
    resumed_calls = []
    monkeypatch.setattr(loop, "evaluate_sample", lambda *a, **k: resumed_calls.append(1) or real(*a, **k))
    assert cli.main(_args(root, out, "--measure-boundary", "--resume")) == 0
    assert len(resumed_calls) == 2  # the first image was not redone
    resumed = json.loads(out.read_text())
    expected = full_run[2]
    for key in ("miou", "pixel_accuracy", "boundary_iou", "per_class_iou", "confusion_matrix", "evaluated"):
        assert resumed[key] == expected[key], key


def test_a_corrupt_image_or_label_is_reported_and_skipped(tmp_path, tiny_clip_configs, capsys):
    data = write_synthetic_dataset("ade20k", tmp_path, count=3, size=(30, 40))
    data[0].image.write_bytes(b"not a jpeg")
    data[2].label.write_bytes(b"not a png")
    status = cli.main(_args(tmp_path, tmp_path / "r.json", "--method", "maskclip", dataset="ade20k"))
    assert status == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["evaluated"] == 1 and result["skipped"] == 2
    assert {Path(s["image"]).name for s in result["skipped_images"]} == {data[0].image.name, data[2].image.name}
    err = capsys.readouterr().err
    assert "skipped" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--limit", "0"], "--limit must be a positive integer"),
        (["--dataset", "cityscapes"], "leftImg8bit/val/<name>_leftImg8bit.png"),
        (["--dataset", "custom"], "--dataset custom needs --images DIR"),
        (["--classes", "a,b"], "--images, --labels and --classes are for --dataset custom"),
        (["--vm", "timm:no_such_model"], "no_such_model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(voc, tmp_path, tiny_clip_configs, capsys, extra, message):
    root, _ = voc
    args = _args(root, tmp_path / "r.json")
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_refuses_a_run_with_other_settings(voc, tmp_path, tiny_clip_configs, monkeypatch, capsys):
    root, _ = voc
    monkeypatch.setattr(loop, "evaluate_sample", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(_args(root, tmp_path / "r.json", "--method", "maskclip")) == 130
    assert cli.main(_args(root, tmp_path / "r.json", "--method", "maskclip", "--limit", "2", "--resume")) == 2
    assert "other settings" in capsys.readouterr().err


def test_two_processes_under_torchrun_equal_one(tmp_path, tiny_clip_configs):
    """gloo on CPU: the images are sharded over two ranks and the confusion matrices all-reduced."""
    from conftest import TINY_CLIP, run_under_torchrun

    write_synthetic_dataset("voc20", tmp_path / "data", count=3, size=(30, 40))
    results = {}
    for procs in (1, 2):
        out = tmp_path / f"r{procs}.json"
        run_under_torchrun(tmp_path, "segmentation.evaluate", procs, [
            "--dataset", "voc20", "--data-root", str(tmp_path / "data"), "--method", "lposs",
            "--vlm", f"open_clip:{TINY_CLIP}", "--vm", VM, "--random-init", "--device", "cpu", "--output", str(out)],
            port=29500)
        results[procs] = json.loads(out.read_text())
    assert results[2]["world_size"] == 2 and results[2]["evaluated"] == 3
    assert results[1]["confusion_matrix"] == results[2]["confusion_matrix"]
    assert results[1]["miou"] == results[2]["miou"]


def test_predictions_of_more_than_256_classes_are_16_bit(tmp_path):
    """A palette PNG holds 256 classes; a longer class list is saved as a 16-bit greyscale PNG."""
    import torch

    from segmentation.datasets import custom_dataset
    from segmentation.metrics import SegmentationMetrics

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.full((6, 8), 7, dtype=np.uint8)).save(tmp_path / "labels" / "a.png")
    classes = [f"class {i}" for i in range(300)]
    data = custom_dataset(tmp_path / "images", tmp_path / "labels", classes)

    class Scores:  # stands in for the model: class 299 everywhere but one pixel of class 7
        def predict(self, image, class_names, on_stage=None):
            scores = torch.zeros(len(class_names), 6, 8)
            scores[299] = 1
            scores[7, 0, 0] = 2
            return scores

    metrics = SegmentationMetrics(300)
    loop.evaluate_sample(Scores(), data, 0, classes, metrics, {}, tmp_path / "out")
    saved = Image.open(tmp_path / "out" / "a.png")
    values = np.asarray(saved)
    assert values[0, 0] == 7 and values[1, 1] == 299 and values.shape == (6, 8)
    assert metrics.confusion[7, 7] == 1 and metrics.confusion[7, 299] == 47
