"""The results of an evaluation: the JSON document and the printed table."""

from __future__ import annotations

import math
import platform
from datetime import datetime, timezone

__all__ = ["peak_memory_mb", "results_document", "results_table", "versions"]


def peak_memory_mb(device) -> dict[str, float]:
    """This process's peak memory in MiB: ``rss`` (resident), and ``cuda`` on a CUDA ``device``."""
    import resource

    import torch

    peak = {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        peak["cuda"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def versions() -> dict[str, str]:
    """The versions of Python and of the packages that decide a result."""
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for name in ("lposs", "torch", "open_clip_torch", "timm", "numpy", "numba", "pillow"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


def _nan_to_none(values):
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def results_table(names: list[str], scores: dict, boundary: bool) -> list[str]:
    """The per-class lines printed at the end: class, IoU, accuracy (and boundary IoU)."""
    width = max(len(n) for n in names)
    header = f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}" + (f"  {'BIoU':>6}" if boundary else "")
    lines = [header, "-" * len(header)]
    for i, name in enumerate(names):
        row = f"{name:<{width}}  {scores['per_class_iou'][i]:6.2f}  {scores['per_class_accuracy'][i]:6.2f}"
        if boundary:
            row += f"  {scores['per_class_boundary_iou'][i]:6.2f}"
        lines.append(row)
    return lines


def results_document(run: dict, classes: list[str], scores: dict, confusion: list, *, boundary: bool,
                     gathered: list[dict], model, images: int, evaluated: int) -> dict:
    """The results JSON of a run.

    Parameters
    ----------
    run : dict
        What was run, first in the document (``dataset``, ``method``, ``vlm``, ``vm``,
        ``random_init``, ``config``).
    classes : list of str
        The classes, ``;`` between synonyms; each is named by its first synonym.
    scores : dict
        :meth:`SegmentationMetrics.compute() <segmentation.metrics.SegmentationMetrics.compute>`.
    confusion : list of list of int
        The (C, C) confusion matrix (rows: ground truth, columns: prediction).
    boundary : bool
        Whether boundary IoU was measured.
    gathered : list of dict
        One per rank: ``skipped``, ``evaluated`` (by this run), ``seconds`` (its loop), ``timings``
        and ``peak`` (:func:`peak_memory_mb`).
    model : the segmenter (its device and precision are recorded)
    images : int
        The images asked for (after ``--limit``).
    evaluated : int
        The images in the metrics, resumed ones included.

    Returns
    -------
    dict
        JSON-ready; NaN scores (a class never seen) are None.
    """
    names = [c.split(";")[0] for c in classes]
    this_run = sum(g["evaluated"] for g in gathered)  # a resumed run's speed counts its own images only
    seconds = max(g["seconds"] for g in gathered)
    timings: dict[str, float] = {}
    for g in gathered:
        for key, value in g["timings"].items():
            timings[key] = timings.get(key, 0.0) + value
    skipped = [s for g in gathered for s in g["skipped"]]
    result = {
        **run,
        "classes": classes,
        "images": images,
        "evaluated": evaluated,
        "skipped": len(skipped),
        "skipped_images": skipped,
        "miou": scores["miou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "per_class_iou": dict(zip(names, _nan_to_none(scores["per_class_iou"]), strict=True)),
        "per_class_accuracy": dict(zip(names, _nan_to_none(scores["per_class_accuracy"]), strict=True)),
        "confusion_matrix": confusion,  # rows: ground truth, columns: prediction
    }
    if boundary:
        result["boundary_iou"] = scores["boundary_iou"]
        result["per_class_boundary_iou"] = dict(zip(names, _nan_to_none(scores["per_class_boundary_iou"]), strict=True))
    result.update({
        "images_per_second": this_run / seconds if seconds else None,
        "seconds": {key: round(value, 3) for key, value in timings.items()},
        "peak_memory_mb": {key: max(g["peak"].get(key, 0.0) for g in gathered) for key in gathered[0]["peak"]},
        "world_size": len(gathered),
        "device": str(getattr(model.vlm, "device", "cpu")),
        "precision": getattr(model.vlm, "precision", "fp32"),
        "versions": versions(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    for key in ("miou", "pixel_accuracy", "boundary_iou"):
        if key in result and isinstance(result[key], float) and math.isnan(result[key]):
            result[key] = None
    return result
