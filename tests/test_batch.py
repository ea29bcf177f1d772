"""``segmentation.batch``: folders in, a mirrored tree out; skip-done reruns, atomic writes, batches
of several images, sharding, the background class and every bad input. The small random-init
encoders and small LPOSS settings of conftest, images of a few dozen pixels, 2-3 classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_CONFIG_KWARGS, interrupt_on_call
from segmentation import LPOSS, LPOSSConfig
from segmentation.batch import BatchInputError, class_lists, find_images, segment_paths

pytestmark = pytest.mark.usefixtures("quiet_random_init")

CLASSES = ["grass", "sky;cloud"]
DATASETS_JSON = Path(__file__).resolve().parents[1] / "segmentation" / "data" / "datasets.json"


@pytest.fixture(scope="module")
def model(small_encoders):
    return LPOSS(*small_encoders, LPOSSConfig(**SMALL_CONFIG_KWARGS, pixel_refine=False))


def _image(path: Path, shape, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def tree(tmp_path):
    """photos/{x.png, a/y.jpg, a/b/z.png, notes.txt}"""
    root = tmp_path / "photos"
    _image(root / "x.png", (30, 40), 0)
    _image(root / "a" / "y.jpg", (36, 30), 1)
    _image(root / "a" / "b" / "z.png", (33, 33), 2)
    (root / "notes.txt").write_text("not an image")
    return root


def _labels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def test_a_folder_gives_a_mirrored_tree_with_each_images_labels(model, tree, tmp_path):
    out = tmp_path / "out"
    results = list(segment_paths(model, [tree], CLASSES, out=out, save_scores=True))
    assert [str(r.relative) for r in results] == ["a/b/z.png", "a/y.jpg", "x.png"]  # sorted; notes.txt ignored
    assert all(r.status == "done" for r in results)
    for result in results:
        stem = out / Path(str(result.relative)).with_suffix("")
        expected = model.predict(result.source, CLASSES)  # one image, straight through the model
        assert np.array_equal(_labels(Path(f"{stem}_labels.png")), expected.argmax(0).numpy())
        np.testing.assert_allclose(np.load(f"{stem}_scores.npy"), expected.numpy(), rtol=1e-5, atol=1e-6)
        assert Image.open(f"{stem}_overlay.png").width > expected.shape[2]  # the legend beside it
        counts = np.bincount(expected.argmax(0).reshape(-1).numpy(), minlength=2)
        assert dict(result.shares) == pytest.approx({n: 100 * c / counts.sum() for n, c in
                                                     zip(["grass", "sky"], counts, strict=True) if c})
        assert result.seconds > 0
    assert not list(out.rglob("*.tmp"))
    narrowed = list(segment_paths(model, [tree], CLASSES, out=tmp_path / "jpg", glob="*.jpg"))
    assert [str(r.relative) for r in narrowed] == ["a/y.jpg"]


def test_a_rerun_skips_what_is_done_and_redoes_what_is_not(model, tree, tmp_path):
    out = tmp_path / "out"
    first = {str(r.relative): r for r in segment_paths(model, [tree], CLASSES, out=out)}
    files = sorted(p for p in out.rglob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    (out / "a" / "y_overlay.png").unlink()  # as if the run had died between y's two files
    (out / "x_overlay.png").rename(out / ".x_overlay.png.123.tmp")  # a leftover temporary is not an output
    second = {str(r.relative): r for r in segment_paths(model, [tree], CLASSES, out=out)}
    assert {k: r.status for k, r in second.items()} == {"a/b/z.png": "skipped", "a/y.jpg": "done", "x.png": "done"}
    z = out / "a" / "b" / "z_labels.png"
    assert z.stat().st_mtime_ns == stamps[z]  # not rewritten
    assert second["a/b/z.png"].shares == first["a/b/z.png"].shares  # read back from its labels PNG
    assert torch.equal(second["a/b/z.png"].labels, first["a/b/z.png"].labels)
    redone = list(segment_paths(model, [tree], CLASSES, out=out, skip_done=False))
    assert all(r.status == "done" for r in redone)
    assert z.stat().st_mtime_ns != stamps[z]
    z.write_bytes(b"not a png")  # a finished image whose labels file went bad: skipped, and said why
    third = {str(r.relative): r for r in segment_paths(model, [tree], CLASSES, out=out)}
    assert third["a/b/z.png"].status == "skipped" and third["a/b/z.png"].labels is None
    assert third["a/b/z.png"].reason.startswith(f"its outputs exist but cannot read label {z}: ")


def test_an_interrupted_write_leaves_nothing_a_rerun_takes_as_done(model, tree, tmp_path, monkeypatch):
    from segmentation import render

    out = tmp_path / "out"
    real = interrupt_on_call(monkeypatch, render, "overlay_image")  # Ctrl+C while the second overlay is made
    with pytest.raises(KeyboardInterrupt):
        list(segment_paths(model, [tree], CLASSES, out=out))
    monkeypatch.setattr(render, "overlay_image", real)
    assert not list(out.rglob("*.tmp"))
    rerun = {str(r.relative): r.status for r in segment_paths(model, [tree], CLASSES, out=out)}
    assert rerun == {"a/b/z.png": "skipped", "a/y.jpg": "done", "x.png": "done"}


def test_batches_of_several_images_equal_one_at_a_time(model, tree, tmp_path):
    one = {str(r.relative): r for r in segment_paths(model, [tree], CLASSES, out=tmp_path / "one")}
    counts = []
    real = model.vlm.dense_features

    def counting(windows):
        counts.append(windows.shape[0])
        return real(windows)

    model.vlm.dense_features = counting
    try:
        many = {str(r.relative): r for r in segment_paths(model, [tree], CLASSES, out=tmp_path / "many", batch_size=2)}
    finally:
        del model.vlm.dense_features
    windows = [len(f.boxes) for f in model.encode_batch([tree / "a/b/z.png", tree / "a/y.jpg", tree / "x.png"])]
    assert counts == [windows[0] + windows[1], windows[2]]  # two network calls for three images
    for key, result in one.items():
        assert torch.equal(result.labels, many[key].labels)


def test_encode_batch_equals_encode_per_image(model, tree):
    paths = [tree / "x.png", tree / "a/y.jpg"]
    batched = model.encode_batch(paths)
    for path, features in zip(paths, batched, strict=True):
        alone = model.encode(path)
        assert features.boxes == alone.boxes and features.original_size == alone.original_size
        torch.testing.assert_close(features.vlm_features, alone.vlm_features, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(features.vm_features, alone.vm_features, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_ranks_share_the_images_once_with_one_process_outputs(model, tree, tmp_path, batch_size):
    single = {str(r.relative): r for r in segment_paths(model, [tree], CLASSES, out=tmp_path / "single",
                                                           batch_size=batch_size)}
    shards = [[r for r in segment_paths(model, [tree], CLASSES, out=tmp_path / "ranks", batch_size=batch_size,
                                        rank=rank, world_size=2)] for rank in range(2)]
    names = [str(r.relative) for shard in shards for r in shard]
    assert sorted(names) == sorted(single) and len(names) == len(set(names))
    assert all(shard for shard in shards)
    for result in (r for shard in shards for r in shard):
        assert torch.equal(result.labels, single[str(result.relative)].labels)


def test_background_is_the_published_voc_synonyms_and_named_everywhere(model, tree, tmp_path):
    voc_background = json.loads(DATASETS_JSON.read_text())["voc"]["classes"][0].split(";")
    assert len(voc_background) == 26 and "sky" in voc_background
    model_classes, names = class_lists(["cat", "dog"], background=True)
    assert names == ["background", "cat", "dog"] and model_classes[0].split(";") == voc_background
    # a synonym the user asks for is theirs, not background's
    model_classes, names = class_lists(["grass", "sky;cloud"], background=True)
    assert model_classes[0].split(";") == [s for s in voc_background if s not in ("grass", "sky", "cloud")]
    out = tmp_path / "out"
    results = list(segment_paths(model, [tree / "x.png"], ["cat", "dog"], out=out, background=True))
    expected = model.predict(tree / "x.png", [";".join(voc_background), "cat", "dog"]).argmax(0)
    assert torch.equal(results[0].labels, expected)
    assert expected.eq(0).any()  # (random weights: background does win pixels here)
    assert "background" in dict(results[0].shares)
    with pytest.raises(ValueError, match="background"):
        class_lists(["background", "cat"], background=True)


def test_a_broken_image_fails_in_one_line_and_the_others_are_done(model, tree, tmp_path):
    (tree / "a" / "broken.jpg").write_text("not a jpeg")
    results = {str(r.relative): r for r in segment_paths(model, [tree], CLASSES, out=tmp_path / "out")}
    broken = results.pop("a/broken.jpg")
    assert broken.status == "failed" and "broken.jpg" in broken.reason and "\n" not in broken.reason
    assert broken.summary()["reason"] == broken.reason
    assert all(r.status == "done" for r in results.values())
    assert not list((tmp_path / "out").rglob("broken*"))


def test_bad_inputs_are_refused_before_anything_is_written(model, tree, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("")
    with pytest.raises(BatchInputError, match="no images in folder .*empty"):
        find_images([tmp_path / "empty"])
    with pytest.raises(BatchInputError, match="no images matching --glob '\\*.gif'"):
        find_images([tree], glob="*.gif")
    with pytest.raises(BatchInputError, match="--out .* is inside the input folder"):
        segment_paths(model, [tree], CLASSES, out=tree / "seg")
    _image(tree / "x.jpg", (20, 20), 3)
    with pytest.raises(BatchInputError, match="x.jpg and .*x.png would both write x_labels.png"):
        find_images([tree])
    with pytest.raises(BatchInputError, match="would both write"):
        find_images([tree / "x.png", tmp_path / "other" / "x.png"])
    (tmp_path / "a-file").write_text("")
    with pytest.raises(BatchInputError, match="cannot write to --out"):
        segment_paths(model, [tree / "x.png"], CLASSES, out=tmp_path / "a-file" / "out")
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        segment_paths(model, [tree / "x.png"], CLASSES, out=tmp_path / "out", batch_size=0)
    assert not (tree / "seg").exists() and not (tmp_path / "out").exists()


def test_a_rerun_with_other_classes_must_overwrite(model, tree, tmp_path):
    out = tmp_path / "out"
    list(segment_paths(model, [tree / "x.png"], CLASSES, out=out))
    with pytest.raises(BatchInputError, match="other settings"):
        segment_paths(model, [tree / "x.png"], ["cat", "dog"], out=out)
    redone = list(segment_paths(model, [tree / "x.png"], ["cat", "dog"], out=out, skip_done=False))
    assert redone[0].status == "done"
    assert [r.status for r in segment_paths(model, [tree / "x.png"], ["cat", "dog"], out=out)] == ["skipped"]
