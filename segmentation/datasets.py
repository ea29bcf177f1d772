"""The paper's eight benchmarks (and your own) in their standard on-disk layouts.

The facts of the published protocol (class names with the background synonyms, folders, file
suffixes, label conventions) ship as ``segmentation/data/datasets.json``:

>>> from segmentation.datasets import DATASETS, load_dataset
>>> sorted(DATASETS)                                       # doctest: +NORMALIZE_WHITESPACE
['ade20k', 'cityscapes', 'coco_object', 'coco_stuff', 'context59', 'context60', 'voc', 'voc20']
>>> data = load_dataset("voc", "/data")                    # doctest: +SKIP
>>> image, label = data.load(0)  # (3, H, W) uint8, (H, W) int64  # doctest: +SKIP

Files are found as mmsegmentation 0.27's ``CustomDataset`` finds them: the names listed in the
split file when there is one, otherwise every file under ``img_dir`` (recursively) ending with
``img_suffix``, sorted by path; the label of ``img_dir/<rel><img_suffix>`` is
``ann_dir/<rel><ann_suffix>``. With ``reduce_zero_label`` the label 0 becomes the ignore index 255
and every other label drops by one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DATASETS", "DatasetInfo", "DatasetLayoutError", "Sample", "SegmentationDataset", "coco_lookup_tables",
           "custom_dataset", "load_dataset", "prepare_coco", "read_label", "write_synthetic_dataset"]

IGNORE_INDEX = 255
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DatasetLayoutError(ValueError):
    """A dataset is missing or not laid out as expected; the message shows the expected layout."""


@dataclass(frozen=True)
class DatasetInfo:
    """One benchmark's protocol: class names and on-disk layout.

    Attributes
    ----------
    name : str
        The registry name (``voc``, ...; ``custom`` for :func:`custom_dataset`).
    classes : tuple of str
        In label order, ``;`` between synonyms. Where a benchmark has a background, it is the
        first class, scored by its synonyms.
    root : str
        The dataset's folder, relative to ``--data-root``.
    img_dir, ann_dir : str
        The image and label folders, relative to ``root``.
    split : str or None
        A file listing the images (one relative name per line), relative to ``root``; None: every
        image in ``img_dir``.
    img_suffix, ann_suffix : str
        What the image and label file names end with.
    reduce_zero_label : bool
        Label 0 is ignored (255) and every other label drops by one.
    """

    name: str
    classes: tuple[str, ...]
    root: str
    img_dir: str
    ann_dir: str
    split: str | None
    img_suffix: str
    ann_suffix: str
    reduce_zero_label: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# Keys of the protocol file that record a fact but configure nothing: ``background`` says whether
# class 0 is a background scored by its synonyms, which ``classes`` already spells out.
_RECORD_ONLY_KEYS = frozenset({"background"})


def _load_registry() -> dict[str, DatasetInfo]:
    raw = json.loads((Path(__file__).parent / "data" / "datasets.json").read_text(encoding="utf-8"))
    registry = {}
    for name, spec in raw.items():
        if name.startswith("_"):
            continue
        fields: dict[str, Any] = {key: value for key, value in spec.items() if key not in _RECORD_ONLY_KEYS}
        registry[name] = DatasetInfo(name=name, **{**fields, "classes": tuple(fields["classes"])})
    return registry


DATASETS: dict[str, DatasetInfo] = _load_registry()


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: ``name`` (the image file's stem), its folder relative to the image
    folder (``""`` at the top; Cityscapes has one per city), and the two paths."""

    name: str
    folder: str
    image: Path
    label: Path

    @property
    def key(self) -> str:
        """``folder/name``: unique within a dataset (saved predictions and resume use it)."""
        return f"{self.folder}/{self.name}" if self.folder else self.name


def read_label(path: str | os.PathLike, reduce_zero_label: bool = False) -> torch.Tensor:
    """Read a label PNG.

    Palette ("P") images give their indices (as VOC's), greyscale 8- or 16-bit their values; an RGB
    label is refused.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    reduce_zero_label : bool
        0 -> 255, every other value v != 255 -> v - 1.

    Returns
    -------
    torch.Tensor
        (H, W) int64 class indices, 255 = ignore.

    Raises
    ------
    FileNotFoundError, ValueError
        ``label file not found: ...`` / ``cannot read label ...: ...`` (:func:`~segmentation.preprocess.open_image`).
    """
    from .preprocess import open_image

    with open_image(path, "label") as opened:
        if opened.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
            raise ValueError(f"a label image must have one channel (palette or greyscale), got mode {opened.mode}")
        array = np.asarray(opened).astype(np.int64)
    label = torch.from_numpy(array)
    if reduce_zero_label:
        label = torch.where(label == 0, IGNORE_INDEX, torch.where(label == IGNORE_INDEX, IGNORE_INDEX, label - 1))
    return label


class SegmentationDataset(Sequence[Sample]):
    """The images and labels of one dataset, in a fixed order; ``load(i)`` reads one pair.

    Parameters
    ----------
    info : DatasetInfo
        Class names and layout.
    root : str or os.PathLike
        The dataset's folder (``--data-root`` joined with ``info.root``).
    layout_hint : str, optional
        What the layout error messages show (default: the tree ``info`` expects).

    Raises
    ------
    DatasetLayoutError
        Folders, the split file or every image are missing.
    """

    def __init__(self, info: DatasetInfo, root: str | os.PathLike, *, layout_hint: str | None = None):
        self.info = info
        self.root = Path(root)
        self._hint = layout_hint or _layout_tree(info, self.root)
        self.samples = self._discover()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Read sample ``index``.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            The (3, H, W) uint8 or float image and the (H, W) int64 label.

        Raises
        ------
        ValueError, OSError
            A file that cannot be read.
        """
        from .preprocess import load_image

        sample = self.samples[index]
        return load_image(sample.image), read_label(sample.label, self.info.reduce_zero_label)

    def _fail(self, problem: str) -> DatasetLayoutError:
        return DatasetLayoutError(f"dataset {self.info.name!r}: {problem}\n{self._hint}")

    def _discover(self) -> list[Sample]:
        info = self.info
        img_dir, ann_dir = self.root / info.img_dir, self.root / info.ann_dir
        for folder in (self.root, img_dir, ann_dir):
            if not folder.is_dir():
                raise self._fail(f"folder not found: {folder}")
        if info.split is not None:
            split = self.root / info.split
            if not split.is_file():
                raise self._fail(f"split file not found: {split}")
            relative = [line.strip() for line in split.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            relative = sorted(
                str(path.relative_to(img_dir))[: -len(info.img_suffix)]
                for path in img_dir.rglob(f"*{info.img_suffix}") if path.is_file()
            )
        if not relative:
            raise self._fail(f"no images ending with {info.img_suffix!r} in {img_dir}")
        samples = []
        for rel in relative:
            image = img_dir / f"{rel}{info.img_suffix}"
            parent = str(Path(rel).parent)
            samples.append(Sample(image.stem, "" if parent == "." else parent, image,
                                  ann_dir / f"{rel}{info.ann_suffix}"))
        if not any(s.label.is_file() for s in samples):
            raise self._fail(f"no label files ending with {info.ann_suffix!r} in {ann_dir}")
        return samples


def _layout_tree(info: DatasetInfo, root: Path) -> str:
    data_root = root
    for _ in Path(info.root).parts:  # root = data_root / info.root
        data_root = data_root.parent
    lines = [f"expected layout under {data_root}:", f"  {info.root}/"]
    lines.append(f"    {info.img_dir}/<name>{info.img_suffix}")
    lines.append(f"    {info.ann_dir}/<name>{info.ann_suffix}")
    if info.split:
        lines.append(f"    {info.split}   (one <name> per line)")
    lines.append("(the README's 'Datasets' section says how to download and prepare it)")
    return "\n".join(lines)


def _registry_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(sorted(DATASETS))} or 'custom'")
    return key


def load_dataset(name: str, data_root: str | os.PathLike) -> SegmentationDataset:
    """One of the paper's benchmarks under ``data_root``.

    Parameters
    ----------
    name : str
        ``voc``, ``voc20``, ``context60``, ``context59``, ``coco_object``, ``coco_stuff``,
        ``cityscapes`` or ``ade20k`` (any case; ``-`` works for ``_``).
    data_root : str or os.PathLike
        The folder holding the datasets.

    Raises
    ------
    ValueError
        An unknown name.
    DatasetLayoutError
        The dataset is not there as expected.
    """
    info = DATASETS[_registry_name(name)]
    return SegmentationDataset(info, Path(data_root) / info.root)


def custom_dataset(images: str | os.PathLike, labels: str | os.PathLike, classes: Sequence[str], *,
                   img_suffix: str | None = None, ann_suffix: str = ".png",
                   reduce_zero_label: bool = False) -> SegmentationDataset:
    """Your own dataset: a folder of images, a folder of label PNGs with the same relative names, and the classes.

    Parameters
    ----------
    images, labels : str or os.PathLike
        The folders; a label's pixel value is an index in ``classes``, 255 = ignore.
    classes : sequence of str
        The class names in label order (``;`` between synonyms).
    img_suffix : str, optional
        The images' suffix; None: the one common image suffix (.jpg, .png, ...) found in ``images``.
    ann_suffix : str
        Image ``images/<rel><img_suffix>`` has the label ``labels/<rel><ann_suffix>``.
    reduce_zero_label : bool
        Label 0 is ignored and every other label drops by one.

    Raises
    ------
    ValueError
        No classes.
    DatasetLayoutError
        A missing folder, no images or several suffixes (with ``img_suffix`` None), or no labels.
    """
    images, labels = Path(images), Path(labels)
    classes = tuple(classes)
    if not classes:
        raise ValueError("a custom dataset needs a class list")
    suffix = img_suffix
    if suffix is None:
        if not images.is_dir():
            raise DatasetLayoutError(f"image folder not found: {images}")
        found = {p.suffix for p in images.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES}
        if len(found) != 1:
            raise DatasetLayoutError(
                f"image folder {images} has "
                f"{'no images' if not found else 'several suffixes: ' + ', '.join(sorted(found))}; "
                "give the images' suffix (--img-suffix)")
        suffix = found.pop()
    info = DatasetInfo(name="custom", classes=classes, root="", img_dir=str(images.resolve()),
                       ann_dir=str(labels.resolve()), split=None, img_suffix=suffix, ann_suffix=ann_suffix,
                       reduce_zero_label=reduce_zero_label)
    hint = (f"expected: image files {images}/<name>{suffix} and label PNGs {labels}/<name>{ann_suffix} "
            "(pixel value = class index, 255 = ignore)")
    return SegmentationDataset(info, Path("/"), layout_hint=hint)


def write_synthetic_dataset(name: str, data_root: str | os.PathLike, count: int = 4, size: tuple[int, int] = (60, 80),
                            seed: int = 0) -> SegmentationDataset:
    """Write ``count`` small generated images and labels in the exact layout of dataset ``name``
    under ``data_root`` (for smoke tests, timing and trying ``lposs evaluate`` without the data).

    Each image is a few coloured rectangles on a background; its label gives each rectangle a class
    (the raw value the dataset stores: shifted by one for ``reduce_zero_label`` datasets) and marks
    the rectangles' outlines 255 (ignore), as VOC does. VOC-style datasets get palette PNGs,
    Cityscapes one folder per city.
    """
    from PIL import Image

    info = DATASETS[_registry_name(name)]
    root = Path(data_root) / info.root
    rng = np.random.default_rng(seed)
    names = []
    palette = (rng.integers(0, 256, (256, 3))).astype(np.uint8)
    for i in range(count):
        stem = f"city{i % 2}/city{i % 2}_{i:06d}" if info.name == "cityscapes" else f"{i:06d}"  # a folder per city
        height, width = size
        image = np.empty((height, width, 3), dtype=np.uint8)
        image[:] = rng.integers(0, 256, 3)
        label = np.zeros((height, width), dtype=np.int64)  # class indices as evaluated; 255 = ignore
        outline = np.zeros((height, width), dtype=bool)
        for _ in range(3):
            cls = int(rng.integers(0, info.num_classes))
            y1, x1 = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
            y2, x2 = y1 + int(rng.integers(6, height - y1 + 1)), x1 + int(rng.integers(6, width - x1 + 1))
            image[y1:y2, x1:x2] = rng.integers(0, 256, 3)
            label[y1:y2, x1:x2] = cls
            outline[y1:y2, x1:x2] = True
            outline[y1 + 1:y2 - 1, x1 + 1:x2 - 1] = False
        if info.reduce_zero_label:  # stored value = class + 1; the outlines 0 (ignored), the top row 255
            raw = label + 1
            raw[outline] = 0
            raw[0] = IGNORE_INDEX
        else:
            raw = label.copy()
            raw[outline] = IGNORE_INDEX
        image_path = root / info.img_dir / f"{stem}{info.img_suffix}"
        label_path = root / info.ann_dir / f"{stem}{info.ann_suffix}"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        jpeg_options: dict[str, Any] = {"quality": 95} if info.img_suffix == ".jpg" else {}
        Image.fromarray(image).save(image_path, **jpeg_options)
        palette_png = info.ann_dir.startswith("Segmentation")  # VOC and Context store palette PNGs
        stored = Image.fromarray(raw.astype(np.uint8), mode="P" if palette_png else "L")
        if palette_png:
            stored.putpalette(palette.reshape(-1).tolist())
        stored.save(label_path)
        names.append(stem)
    if info.split:
        split = root / info.split
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return load_dataset(info.name, data_root)


# --------------------------------------------------------------------------- COCO label conversion
# COCO-Stuff 164k's stuffthingmaps store the COCO category id - 1 (0..181; 255 unlabelled). Eleven
# thing ids are unused; the 171 used ones, in order, are the train ids of COCO-Stuff, and the 80
# things among them (raw id <= 90) plus a background (every stuff class and unlabelled pixels) are
# COCO-Object's 81 classes: the conversions of mmsegmentation's coco_stuff164k tool and of the
# published LPOSS code's convert_coco_object tool.
_COCO_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def coco_lookup_tables() -> tuple[np.ndarray, np.ndarray]:
    """(stuff, object) uint8 lookup tables of 256 entries: raw stuffthingmap value -> train id."""
    used = [i for i in range(182) if i not in _COCO_UNUSED]
    stuff = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    stuff[used] = np.arange(len(used))
    objects = np.zeros(256, dtype=np.uint8)  # stuff and unlabelled: background
    things = [i for i in used if i <= 90]
    objects[things] = np.arange(1, len(things) + 1)
    return stuff, objects


def prepare_coco(data_root: str | os.PathLike, *, split: str = "val2017", overwrite: bool = False) -> int:
    """Write ``<name>_labelTrainIds.png`` (COCO-Stuff) and ``<name>_instanceTrainIds.png``
    (COCO-Object) beside each stuffthingmap PNG in ``data_root/coco_stuff164k/annotations/<split>``
    (``lposs prepare-coco``).

    Parameters
    ----------
    data_root : str or os.PathLike
        The folder holding ``coco_stuff164k/``.
    split : str
        The annotations' sub-folder (default ``val2017``).
    overwrite : bool
        Convert maps whose two label files exist too (default: skip them).

    Returns
    -------
    int
        How many stuffthingmaps were found (converted or already done).

    Raises
    ------
    DatasetLayoutError
        No stuffthingmap in the folder.
    ValueError
        A map that cannot be read (:func:`~segmentation.preprocess.open_image`).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from .preprocess import open_image

    folder = Path(data_root) / DATASETS["coco_stuff"].root / "annotations" / split
    maps = sorted(p for p in folder.glob("*.png") if "TrainIds" not in p.name) if folder.is_dir() else []
    if not maps:
        raise DatasetLayoutError(
            f"no COCO-Stuff stuffthingmaps in {folder}; expected {folder}/<name>.png from "
            "stuffthingmaps_trainval2017.zip (the README's 'Datasets' section)")
    stuff, objects = coco_lookup_tables()
    for path in tqdm(maps, desc="COCO labels", unit="map"):
        targets = (path.with_name(f"{path.stem}_labelTrainIds.png"),
                   path.with_name(f"{path.stem}_instanceTrainIds.png"))
        if not overwrite and all(t.is_file() for t in targets):
            continue
        with open_image(path, "stuffthingmap") as opened:
            raw = np.asarray(opened)
        for table, target in zip((stuff, objects), targets, strict=True):
            Image.fromarray(table[raw]).save(target)
    return len(maps)


if __name__ == "__main__":  # python -m segmentation.datasets prepare-coco DATA_ROOT: lposs prepare-coco
    import sys

    from .commands.prepare_coco import main

    sys.exit(main(sys.argv[1:]))
