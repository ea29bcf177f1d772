"""Label maps as COCO annotations: one per (image, class present), the mask as COCO RLE.

The RLE is pycocotools' (the reference implementation; the ``coco`` extra,
``pip install "lposs[coco]"``). Category ids are the class indices plus one (COCO keeps 0 free),
so the mask of category ``c`` is ``labels == c - 1``.

>>> import torch
>>> labels = torch.tensor([[0, 1, 1], [0, 2, 2]])  # (H, W) class indices of one image
>>> anns = label_annotations(labels, ["background", "cat", "dog"], image_id=1)
>>> [(a["category_id"], a["area"], a["bbox"]) for a in anns]
[(1, 2, [0.0, 0.0, 1.0, 2.0]), (2, 2, [1.0, 0.0, 2.0, 1.0]), (3, 2, [1.0, 1.0, 2.0, 1.0])]
>>> document = coco_document([coco_image(1, "a.png", 2, 3)], ["background", "cat", "dog"], anns)
>>> sorted(document)
['annotations', 'categories', 'images']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["coco_categories", "coco_document", "coco_image", "label_annotations"]


def _mask_api():
    """pycocotools' mask API, or a one-line ImportError naming what installs it."""
    from encoders._optional import require

    return require("pycocotools.mask", feature="COCO output", extra="coco", package="pycocotools")


def _display_name(name: str) -> str:
    return name.split(";")[0].strip()


def coco_categories(class_names: Sequence[str]) -> list[dict]:
    """``[{"id": i + 1, "name": first synonym of class i}, ...]``."""
    return [{"id": i + 1, "name": _display_name(name)} for i, name in enumerate(class_names)]


def coco_image(image_id: int, file_name: str, height: int, width: int) -> dict:
    """One entry of a COCO ``images`` list."""
    return {"id": int(image_id), "file_name": str(file_name), "height": int(height), "width": int(width)}


def label_annotations(labels, class_names: Sequence[str], *, image_id: int, first_id: int = 1) -> list[dict]:
    """COCO annotations of one label map, one per class present, in class order.

    Parameters
    ----------
    labels : (H, W) integer array or tensor of class indices in ``[0, len(class_names))``
    class_names : the classes (``;`` separates synonyms); only their number is used here
    image_id : the image's id in the COCO ``images`` list
    first_id : the id of the first annotation (the next ones count up)

    Returns
    -------
    list of dict with ``id``, ``image_id``, ``category_id`` (class index + 1), ``segmentation``
    (COCO RLE: ``size`` [H, W], ``counts`` str), ``area`` (pixels), ``bbox`` [x, y, w, h] and
    ``iscrowd`` 0. The masks of the annotations tile the image.
    """
    mask_api = _mask_api()
    array = labels.cpu().numpy() if hasattr(labels, "cpu") else np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"labels must be an (H, W) map of class indices, got shape {tuple(array.shape)}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= len(class_names)):
        raise ValueError(f"labels must be class indices in [0, {len(class_names)}), "
                         f"got values from {array.min()} to {array.max()}")
    annotations: list[dict] = []
    for cls in np.unique(array).tolist():
        rle = mask_api.encode(np.asfortranarray((array == cls).astype(np.uint8)))
        annotations.append({
            "id": first_id + len(annotations),
            "image_id": int(image_id),
            "category_id": int(cls) + 1,
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(mask_api.area(rle)),
            "bbox": [float(v) for v in mask_api.toBbox(rle)],
            "iscrowd": 0,
        })
    return annotations


def coco_document(images: list[dict], class_names: Sequence[str], annotations: list[dict]) -> dict:
    """A COCO file's content: ``images``, ``categories`` (from ``class_names``) and ``annotations``
    (renumbered 1, 2, ... in the order given)."""
    numbered = [{**annotation, "id": i + 1} for i, annotation in enumerate(annotations)]
    return {"images": images, "categories": coco_categories(class_names), "annotations": numbered}
