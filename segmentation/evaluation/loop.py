"""Predict, score and save, one image at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..pipeline import StageTimer

if TYPE_CHECKING:  # pragma: no cover
    from ..datasets import Sample

__all__ = ["evaluate_images", "evaluate_sample", "save_prediction"]


def evaluate_sample(model, dataset, index: int, classes: Sequence[str], metrics, timings: dict[str, float],
                    save_dir: Path | None) -> None:
    """Predict image ``index`` of ``dataset``, add it to ``metrics`` and write its prediction.

    Parameters
    ----------
    model : a segmenter (``predict(image, classes, on_stage=...)`` -> (C, H, W) scores)
    dataset : :class:`~segmentation.datasets.SegmentationDataset`
    index : int
        The sample.
    classes : sequence of str
        The C class names, in label order.
    metrics : :class:`~segmentation.metrics.SegmentationMetrics`
    timings : dict
        Seconds per stage, added into (``load``, the model's stages, ``metrics``).
    save_dir : Path or None
        Where ``<folder>/<name>.png`` (pixel value = class index) goes; None writes nothing.

    Raises
    ------
    ValueError, OSError
        The image or the label cannot be read.
    """
    import torch.nn.functional as F

    sample = dataset[index]
    timer = StageTimer(timings)  # adds each stage's seconds into ``timings``
    timer("load")
    image, label = dataset.load(index)
    scores = model.predict(image, classes, on_stage=timer)
    timer("metrics")
    if scores.shape[1:] != label.shape:  # an image and label of different sizes: score at the label's
        scores = F.interpolate(scores[None], size=tuple(label.shape), mode="bilinear", align_corners=False)[0]
    prediction = scores.argmax(0)
    metrics.update(prediction, label.to(prediction.device))
    if save_dir is not None:
        save_prediction(prediction, len(classes), save_dir / sample.folder / f"{sample.name}.png")
    timer.stop()


def save_prediction(prediction: torch.Tensor, num_classes: int, target: Path) -> None:
    """Write ``prediction`` ((H, W) class indices) as a PNG whose pixel values are the indices.

    A palette PNG for at most 256 classes, a 16-bit greyscale PNG for longer class lists.
    """
    import numpy as np
    from PIL import Image

    from ..render import label_image

    target.parent.mkdir(parents=True, exist_ok=True)
    if num_classes <= 256:
        label_image(prediction.to(torch.uint8), num_classes).save(target)
    else:
        Image.fromarray(prediction.cpu().numpy().astype(np.uint16)).save(target)


def evaluate_images(model, dataset, indices: Sequence[int], classes: Sequence[str], state, *,
                    save_dir: Path | None = None) -> Iterator[tuple[Sample, Exception | None]]:
    """Evaluate the images ``indices`` of ``dataset`` into ``state``, saving it after each one.

    Parameters
    ----------
    model, dataset, classes, save_dir
        As :func:`evaluate_sample` takes them.
    indices : sequence of int
        This rank's images still to do, in order.
    state : :class:`~segmentation.evaluation.state.EvaluationState`
        Its metrics, timings, done keys and skipped images are updated; it is saved after every
        image, so an interrupted run resumes after the last one finished.

    Yields
    ------
    (sample, error)
        Each image once it is recorded: ``error`` is None, or the ValueError / OSError for which it
        was skipped (it is listed in ``state.skipped``).
    """
    for index in indices:
        sample = dataset[index]
        error: Exception | None = None
        try:
            evaluate_sample(model, dataset, index, classes, state.metrics, state.timings, save_dir)
        except (OSError, ValueError) as caught:
            error = caught
            state.skipped.append({"image": str(sample.image), "error": str(caught)})
        state.done.add(sample.key)
        state.save()
        yield sample, error
