"""Dataset readers: every benchmark's layout on a generated tiny dataset, label conventions, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segmentation.datasets import (
    DATASETS,
    DatasetLayoutError,
    custom_dataset,
    load_dataset,
    read_label,
    write_synthetic_dataset,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "datasets.json"


def test_the_registry_is_the_published_protocol():
    """Eight datasets; the shipped JSON is the protocol's (compared with the shared copy when present)."""
    assert sorted(DATASETS) == ["ade20k", "cityscapes", "coco_object", "coco_stuff", "context59", "context60",
                                "voc", "voc20"]
    counts = {name: info.num_classes for name, info in DATASETS.items()}
    assert counts == {"voc": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81,
                      "coco_stuff": 171, "cityscapes": 19, "ade20k": 150}
    assert DATASETS["voc"].classes[0].split(";")[:2] == ["sky", "wall"]  # background synonyms
    assert DATASETS["ade20k"].reduce_zero_label and not DATASETS["voc"].reduce_zero_label
    if SHARED.is_file():
        shipped_path = Path(__file__).resolve().parents[1] / "segmentation" / "data" / "datasets.json"
        shipped = json.loads(shipped_path.read_text())
        assert shipped == json.loads(SHARED.read_text())


def test_the_background_flag_of_the_protocol_file_matches_its_class_lists():
    """``background`` is kept in the shipped file as the protocol records it; it must say what the
    class lists say: class 0 is a background (its synonyms, or the word itself) exactly where it is set."""
    shipped_path = Path(__file__).resolve().parents[1] / "segmentation" / "data" / "datasets.json"
    raw = {name: spec for name, spec in json.loads(shipped_path.read_text()).items() if not name.startswith("_")}
    flagged = {name for name, spec in raw.items() if spec["background"]}
    assert flagged == {"voc", "context60", "coco_object"}
    for name, spec in raw.items():
        first = spec["classes"][0].split(";")
        assert (first[0] in ("sky", "background")) == spec["background"], name
        assert DATASETS[name].classes == tuple(spec["classes"])


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_each_reader_on_its_exact_layout(tmp_path, name):
    """The generator writes the raw files; the reader's labels follow the dataset's convention,
    checked here against the raw stored values with the rule written out."""
    info = DATASETS[name]
    data = write_synthetic_dataset(name, tmp_path, count=3)
    assert len(data) == 3 and data.classes == info.classes
    root = tmp_path / info.root
    for i, sample in enumerate(data):
        assert sample.image.is_file() and sample.label.is_file()
        assert str(sample.image).startswith(str(root / info.img_dir))
        assert sample.image.name.endswith(info.img_suffix) and sample.label.name.endswith(info.ann_suffix)
        image, label = data.load(i)
        assert image.dtype == torch.uint8 and image.shape == (3, 60, 80)
        raw = np.asarray(Image.open(sample.label)).astype(np.int64)
        if info.reduce_zero_label:
            expected = np.where(raw == 0, 255, np.where(raw == 255, 255, raw - 1))
            assert (raw == 0).any() and (raw == 255).any()
        else:
            expected = raw
        assert np.array_equal(label.numpy(), expected)
        valid = label[label != 255]
        assert valid.min() >= 0 and valid.max() < info.num_classes
    if name == "cityscapes":  # one folder per city, files found recursively, sorted by path
        assert [s.folder for s in data] == ["city0", "city0", "city1"]
        assert data[0].name == "city0_000000_leftImg8bit"
    if info.split:
        assert [s.name for s in data] == (root / info.split).read_text().split()


def test_palette_labels_give_indices_not_colours(tmp_path):
    """VOC stores palette PNGs: the values are the palette indices, whatever the colours."""
    values = np.array([[0, 1, 255], [20, 3, 7]], dtype=np.uint8)
    image = Image.fromarray(values, mode="P")
    image.putpalette([(i * 37) % 256 for i in range(768)])
    image.save(tmp_path / "label.png")
    assert read_label(tmp_path / "label.png").tolist() == values.tolist()
    assert read_label(tmp_path / "label.png", reduce_zero_label=True).tolist() == [[255, 0, 255], [19, 2, 6]]
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="one channel"):
        read_label(tmp_path / "rgb.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read label"):
        read_label(tmp_path / "broken.png")


def test_a_missing_dataset_shows_the_expected_layout(tmp_path):
    with pytest.raises(DatasetLayoutError) as info:
        load_dataset("voc", tmp_path)
    message = str(info.value)
    for part in (f"expected layout under {tmp_path}:", "VOCdevkit/VOC2012", "JPEGImages/<name>.jpg",
                 "SegmentationClass/<name>.png", "ImageSets/Segmentation/val.txt", "folder not found"):
        assert part in message
    write_synthetic_dataset("ade20k", tmp_path, count=1)
    (tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "000000.png").unlink()
    with pytest.raises(DatasetLayoutError, match="no label files ending with '.png'"):
        load_dataset("ADE20k", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope", tmp_path)
    write_synthetic_dataset("voc", tmp_path / "v", count=1)
    (tmp_path / "v" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="split file not found"):
        load_dataset("voc", tmp_path / "v")


def test_custom_dataset(tmp_path):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "labels" / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for rel in ("a", "sub/b"):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{rel}.png")
        Image.fromarray(rng.integers(0, 3, (10, 12), dtype=np.uint8)).save(tmp_path / "labels" / f"{rel}.png")
    data = custom_dataset(tmp_path / "images", tmp_path / "labels", ["cat", "dog", "sky;cloud"])
    assert [s.key for s in data] == ["a", "sub/b"] and data.classes == ("cat", "dog", "sky;cloud")
    image, label = data.load(1)
    assert image.shape == (3, 10, 12) and label.shape == (10, 12) and label.max() < 3
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "images" / "c.jpg")
    with pytest.raises(DatasetLayoutError, match="several suffixes"):
        custom_dataset(tmp_path / "images", tmp_path / "labels", ["a"])
    assert len(custom_dataset(tmp_path / "images", tmp_path / "labels", ["a"], img_suffix=".png")) == 2
    with pytest.raises(DatasetLayoutError, match="image folder not found"):
        custom_dataset(tmp_path / "nope", tmp_path / "labels", ["a"])


def test_coco_label_conversion(tmp_path):
    """The published mappings (mmseg's coco_stuff164k tool, LPOSS's convert_coco_object): raw
    stuffthingmap value -> COCO-Stuff train id, and COCO-Object (80 things + background)."""
    from segmentation.datasets import coco_lookup_tables, prepare_coco

    stuff, objects = coco_lookup_tables()
    published_stuff = {0: 0, 10: 10, 12: 11, 24: 23, 26: 24, 27: 25, 30: 26, 43: 39, 45: 40, 64: 59, 66: 60,
                       69: 61, 71: 62, 81: 72, 83: 73, 89: 79, 91: 80, 92: 81, 181: 170, 255: 255}
    for raw, train_id in published_stuff.items():
        assert stuff[raw] == train_id
        assert objects[raw] == (train_id + 1 if raw <= 90 else 0)
    assert sorted(set(stuff[:182].tolist()) - {255}) == list(range(171))
    assert sorted(set(objects.tolist())) == list(range(81))

    folder = tmp_path / "coco_stuff164k" / "annotations" / "val2017"
    images = tmp_path / "coco_stuff164k" / "images" / "val2017"
    folder.mkdir(parents=True)
    images.mkdir(parents=True)
    raw = np.array([[0, 12, 91], [255, 181, 89]], dtype=np.uint8)
    Image.fromarray(raw).save(folder / "000000000139.png")
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(images / "000000000139.jpg")
    assert prepare_coco(tmp_path) == 1
    assert load_dataset("coco_stuff", tmp_path).load(0)[1].tolist() == [[0, 11, 80], [255, 170, 79]]
    assert load_dataset("coco_object", tmp_path).load(0)[1].tolist() == [[1, 12, 0], [0, 0, 80]]
    with pytest.raises(DatasetLayoutError, match="stuffthingmaps"):
        prepare_coco(tmp_path / "empty")


def test_prepare_coco_command(tmp_path, capsys):
    """``lposs prepare-coco`` and its old form ``python -m segmentation.datasets prepare-coco``: the
    label files written, a rerun skipping them, --overwrite redoing them, and one error line."""
    import subprocess
    import sys

    from segmentation import cli

    folder = tmp_path / "coco_stuff164k" / "annotations" / "val2017"
    folder.mkdir(parents=True)
    Image.fromarray(np.array([[0, 12], [255, 92]], dtype=np.uint8)).save(folder / "1.png")
    assert cli.main(["prepare-coco", str(tmp_path)]) == 0
    assert "1 label maps" in capsys.readouterr().out
    stuff_file = folder / "1_labelTrainIds.png"
    assert np.asarray(Image.open(stuff_file)).tolist() == [[0, 11], [255, 81]]
    assert np.asarray(Image.open(folder / "1_instanceTrainIds.png")).tolist() == [[1, 12], [0, 0]]
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(stuff_file)  # a rerun keeps what is there
    assert cli.main(["prepare-coco", str(tmp_path)]) == 0
    assert np.asarray(Image.open(stuff_file)).tolist() == [[0, 0], [0, 0]]
    assert cli.main(["prepare-coco", str(tmp_path), "--overwrite"]) == 0
    assert np.asarray(Image.open(stuff_file)).tolist() == [[0, 11], [255, 81]]
    capsys.readouterr()

    assert cli.main(["prepare-coco", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lposs prepare-coco: error: no COCO-Stuff stuffthingmaps in") and err.count("\n") == 1
    (folder / "2.png").write_bytes(b"not a png")
    assert cli.main(["prepare-coco", str(tmp_path)]) == 2
    assert "cannot read stuffthingmap" in capsys.readouterr().err

    (folder / "2.png").unlink()
    old = subprocess.run([sys.executable, "-m", "segmentation.datasets", "prepare-coco", str(tmp_path), "--overwrite"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False)
    assert old.returncode == 0, old.stderr
    assert "1 label maps" in old.stdout
    old = subprocess.run([sys.executable, "-m", "segmentation.datasets", "prepare-coco", str(tmp_path / "nothing")],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False)
    assert old.returncode == 2 and old.stderr.startswith("python -m segmentation.datasets prepare-coco: error: no COCO")
