"""COCO output: label maps -> RLE annotations (pycocotools), checked by decoding them with
pycocotools, as a consumer of the file would; and ``lposs segment --coco-json`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from segmentation import cli
from segmentation.coco import coco_document, coco_image, label_annotations

mask_api = pytest.importorskip("pycocotools.mask")


def _bbox(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
            float(rows.max() - rows.min() + 1)]


def _check(annotations, labels: np.ndarray, image_id: int) -> None:
    """The decoded masks tile the image and are the labels, class by class."""
    tiles = np.zeros(labels.shape, dtype=np.int64)
    for annotation in annotations:
        rle = dict(annotation["segmentation"])
        rle["counts"] = rle["counts"].encode("ascii")
        mask = mask_api.decode(rle)
        cls = annotation["category_id"] - 1
        assert np.array_equal(mask.astype(bool), labels == cls)
        assert annotation["area"] == int((labels == cls).sum())
        assert annotation["bbox"] == _bbox(labels == cls)
        assert annotation["iscrowd"] == 0 and annotation["image_id"] == image_id
        tiles += mask
    assert (tiles == 1).all()
    assert sorted(a["category_id"] - 1 for a in annotations) == np.unique(labels).tolist()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_label_annotations_decode_to_the_labels(height, width, classes, seed):
    labels = np.random.default_rng(seed).integers(0, classes, (height, width))
    _check(label_annotations(labels, [f"c{i}" for i in range(classes)], image_id=7), labels, 7)


def test_annotations_of_a_tensor_and_bad_labels():
    import torch

    labels = torch.tensor([[0, 0, 2], [2, 2, 0]])
    annotations = label_annotations(labels, ["a", "b;bee", "c"], image_id=1, first_id=5)
    assert [a["id"] for a in annotations] == [5, 6] and [a["category_id"] for a in annotations] == [1, 3]
    _check(annotations, labels.numpy(), 1)
    document = coco_document([coco_image(1, "x.png", 2, 3)], ["a", "b;bee", "c"], annotations)
    assert document["categories"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    assert [a["id"] for a in document["annotations"]] == [1, 2]
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        label_annotations(labels, ["a", "b"], image_id=1)
    with pytest.raises(ValueError, match="shape"):
        label_annotations(labels[0], ["a", "b", "c"], image_id=1)


def test_segment_coco_json_equals_the_label_pngs(tmp_path, tiny_clip_configs, quiet_random_init, capsys):
    """A folder with a subfolder, --background: the COCO file's masks, decoded by pycocotools'
    COCO API, equal each image's labels PNG; file names are relative to the input folder."""
    from pycocotools.coco import COCO

    rng = np.random.default_rng(0)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "in" / "x.png")
    Image.fromarray(rng.integers(0, 256, (26, 34, 3), dtype=np.uint8)).save(tmp_path / "in" / "sub" / "y.png")
    out, coco_path = tmp_path / "out", tmp_path / "coco.json"
    status = cli.main(["segment", str(tmp_path / "in"), "--classes", "cat,dog", "--background", "--out", str(out),
                       "--coco-json", str(coco_path), "--vlm", f"open_clip:{tiny_clip_configs[0]}",
                       "--vm", "timm:vit_small_patch16_224.dino", "--method", "maskclip", "--random-init",
                       "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    document = json.loads(coco_path.read_text())
    assert document["categories"] == [{"id": 1, "name": "background"}, {"id": 2, "name": "cat"},
                                      {"id": 3, "name": "dog"}]
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in document["images"]] == [
        (1, "sub/y.png", 26, 34), (2, "x.png", 30, 40)]
    coco = COCO(str(coco_path))
    for image in document["images"]:
        labels = np.asarray(Image.open(out / image["file_name"].replace(".png", "_labels.png"))).astype(np.int64)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        tiles = np.zeros(labels.shape, dtype=np.int64)
        for annotation in annotations:
            mask = coco.annToMask(annotation)
            assert np.array_equal(mask.astype(bool), labels == annotation["category_id"] - 1)
            assert annotation["area"] == mask.sum() and annotation["iscrowd"] == 0
            tiles += mask
        assert (tiles == 1).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["background", "cat", "dog"]
    assert all(set(e["classes"]) <= {"background", "cat", "dog"} and e["status"] == "done"
               for e in summary["images"])
    # a rerun skips both images and still writes the same COCO file (read back from the label PNGs)
    coco_path.unlink()
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat,dog", "--background", "--out", str(out),
                     "--coco-json", str(coco_path), "--vlm", f"open_clip:{tiny_clip_configs[0]}",
                     "--vm", "timm:vit_small_patch16_224.dino", "--method", "maskclip", "--random-init",
                     "--device", "cpu"]) == 0
    assert json.loads(coco_path.read_text()) == document
    assert [e["status"] for e in json.loads((out / "summary.json").read_text())["images"]] == ["skipped"] * 2
