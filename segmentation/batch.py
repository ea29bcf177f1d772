"""Segment a collection: files and folders in, a mirrored tree of label PNGs and overlays out.

>>> from segmentation.batch import segment_paths                                  # doctest: +SKIP
>>> for result in segment_paths(model, ["photos/"], ["cat", "dog"], out="seg", background=True):
...     print(result.relative, result.status, result.shares)                      # doctest: +SKIP

- ``photos/a/b/x.jpg`` gives ``seg/a/b/x_labels.png`` and ``seg/a/b/x_overlay.png`` (and
  ``x_scores.npy`` with ``save_scores``); a file named directly is written at the top of ``out``.
- Every output is written under a temporary name and renamed, so an image whose outputs all exist
  is complete: a rerun skips it (``skip_done``) without rewriting its files. ``out`` remembers the
  settings of its results (``.lposs-segment.json``); a rerun with other settings must overwrite.
- ``rank``, ``world_size``: the images are cut into batches of ``batch_size`` in input order and
  batch ``j`` goes to rank ``j % world_size``, so each image is done once and with the same batch
  as in one process (the same outputs).

The text is encoded once per call; the windows of ``batch_size`` images go through each network
in one batch (:meth:`LPOSS.encode_batch`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from graphprop._validation import check_positive_int

from .datasets import _IMAGE_SUFFIXES as IMAGE_SUFFIXES

__all__ = [
    "IMAGE_SUFFIXES",
    "BatchInputError",
    "ImageJob",
    "ImageResult",
    "background_synonyms",
    "class_lists",
    "find_images",
    "segment_paths",
    "summary_document",
    "write_json",
]

MANIFEST = ".lposs-segment.json"
BACKGROUND = "background"


class BatchInputError(ValueError):
    """Inputs or an output folder that a run cannot use (the message is one line naming them)."""


# --------------------------------------------------------------------------- classes
def background_synonyms() -> tuple[str, ...]:
    """The published VOC background synonyms (``sky``, ``wall``, ``tree``, ...): the first class
    of VOC in ``segmentation/data/datasets.json``."""
    from .datasets import DATASETS

    return tuple(DATASETS["voc"].classes[0].split(";"))


def class_lists(classes: Sequence[str] | str, background: bool = False) -> tuple[list[str], list[str]]:
    """(the model's class list, the display names) of a run.

    ``background=True`` puts a ``background`` class first (label 0), scored by the published VOC
    background synonyms less any synonym of the given classes (with ``sky`` among the classes,
    sky is not background). Display names are each class's first synonym.
    """
    import encoders

    model_classes = list(encoders.split_class_names(classes)[0])
    if not background:
        return model_classes, [c.split(";")[0] for c in model_classes]
    taken = {s.lower() for c in model_classes for s in c.split(";")}
    if BACKGROUND in taken:
        raise ValueError(f"--background adds a class named {BACKGROUND!r}; the classes already name one")
    synonyms = [s for s in background_synonyms() if s.lower() not in taken]
    if not synonyms:
        raise ValueError("--background: the classes hold every background synonym; nothing is left for it")
    model_classes = [";".join(synonyms), *model_classes]
    return model_classes, [BACKGROUND, *(c.split(";")[0] for c in model_classes[1:])]


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ImageJob:
    """One image of a run: its file, its path relative to the folder it was found in (its name
    for a file given directly) and its position in the run (the COCO image id is ``index + 1``)."""

    source: Path
    relative: PurePosixPath
    index: int

    def outputs(self, out: Path, save_scores: bool = False) -> dict[str, Path]:
        """``{"labels": ..., "overlay": ...[, "scores": ...]}`` under ``out``, mirroring ``relative``."""
        stem = out / Path(*self.relative.parent.parts) / self.relative.stem
        paths = {"labels": Path(f"{stem}_labels.png"), "overlay": Path(f"{stem}_overlay.png")}
        if save_scores:
            paths["scores"] = Path(f"{stem}_scores.npy")
        return paths


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def find_images(inputs: Sequence[str | os.PathLike], *, glob: str | None = None,
                out: str | os.PathLike | None = None) -> list[ImageJob]:
    """The images of files and folders, in a fixed order (inputs in order, each folder's images
    sorted by relative path).

    A folder is searched recursively for files with an image suffix (:data:`IMAGE_SUFFIXES`, any
    case) whose relative path matches ``glob`` (``fnmatch``: ``*`` also matches ``/``). A file
    given directly is always taken (an unreadable one fails when it is read).

    Raises
    ------
    BatchInputError
        A folder with no images; ``out`` inside an input folder; two images that would write the
        same outputs (``x.jpg`` and ``x.png`` side by side, or one name in two inputs).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise BatchInputError("no images given")
    out_path = Path(out).resolve() if out is not None else None
    found: list[tuple[Path, PurePosixPath]] = []
    for given in map(Path, inputs):
        if not given.is_dir():
            found.append((given, PurePosixPath(given.name)))
            continue
        folder = given.resolve()
        if out_path is not None and _inside(out_path, folder):
            raise BatchInputError(f"--out {out} is inside the input folder {given}; write the outputs elsewhere")
        images = []
        for path in given.rglob("*"):
            relative = PurePosixPath(path.relative_to(given).as_posix())
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and \
                    (glob is None or fnmatch.fnmatch(str(relative), glob)):
                images.append((path, relative))
        if not images:
            narrowed = f" matching --glob {glob!r}" if glob else ""
            raise BatchInputError(f"no images{narrowed} in folder {given} (looked for {', '.join(IMAGE_SUFFIXES)})")
        found.extend(sorted(images, key=lambda item: str(item[1])))
    jobs = [ImageJob(path, relative, i) for i, (path, relative) in enumerate(found)]
    seen: dict[PurePosixPath, ImageJob] = {}
    for job in jobs:
        key = job.relative.with_suffix("")
        if key in seen:
            raise BatchInputError(f"{seen[key].source} and {job.source} would both write {key}_labels.png; "
                                  "rename one or segment them into different --out folders")
        seen[key] = job
    return jobs


def check_output_folder(out: str | os.PathLike) -> Path:
    """Create ``out`` and make sure files can be written in it; BatchInputError if not."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".lposs-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise BatchInputError(f"cannot write to --out {out}: {error.strerror or error}") from None
    return out


# --------------------------------------------------------------------------- outputs
def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary path)``, then rename onto ``path``: ``path`` is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, document) -> None:
    """``document`` as indented JSON, written atomically."""
    text = json.dumps(document, indent=2) + "\n"
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _save_array(array: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
    return write


def _write_outputs(paths: dict[str, Path], image: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                   names: list[str]) -> None:
    from .render import label_image, overlay_image, rgb_array

    pictures = {
        "labels": label_image(labels, len(names)),
        "overlay": overlay_image(rgb_array(image), labels, names),
    }
    for kind, picture in pictures.items():
        _atomic_write(paths[kind], partial(picture.save, format="PNG"))
    if "scores" in paths:
        _atomic_write(paths["scores"], _save_array(scores.float().cpu().numpy()))


def _check_settings(out: Path, settings: dict, overwrite: bool, write: bool) -> None:
    """Refuse to resume into results of other settings; record this run's (when ``write``)."""
    manifest = out / MANIFEST
    if not overwrite and manifest.is_file():
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous != settings:
            raise BatchInputError(f"--out {out} holds results of other settings (classes, method or encoders); "
                                  "use --overwrite to redo them, or another --out")
    if write:
        write_json(manifest, settings)


# --------------------------------------------------------------------------- one result per image
@dataclass
class ImageResult:
    """What became of one image.

    status : "done" (segmented and written), "skipped" (its outputs existed; ``labels`` read back)
        or "failed" (``reason`` says why; nothing of it written)
    labels : (H, W) long tensor of class indices (None when failed)
    shares : (display name, percent of pixels) of the classes present, largest first
    seconds : time spent on it (its share of the batch's network time included)
    """

    job: ImageJob
    status: str
    outputs: dict[str, Path]
    labels: torch.Tensor | None = None
    shares: list[tuple[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    reason: str | None = None

    @property
    def source(self) -> Path:
        return self.job.source

    @property
    def relative(self) -> PurePosixPath:
        return self.job.relative

    def summary(self) -> dict:
        """This image's entry of the summary JSON."""
        entry = {"image": str(self.relative), "source": str(self.source), "status": self.status,
                 "seconds": round(self.seconds, 4), "classes": {name: round(share, 4) for name, share in self.shares}}
        if self.reason is not None:
            entry["reason"] = self.reason
        if self.status != "failed":
            entry["outputs"] = {kind: str(path) for kind, path in self.outputs.items()}
        return entry


def _shares(labels: torch.Tensor, names: list[str]) -> list[tuple[str, float]]:
    from .render import class_shares

    return class_shares(labels, names)


def _read_labels(path: Path) -> torch.Tensor:
    from .preprocess import open_image

    with open_image(path, "label") as opened:
        return torch.from_numpy(np.asarray(opened).astype(np.int64))


def _settings(model, model_classes: list[str], names: list[str]) -> dict:
    def encoder(net):
        if net is None:
            return None
        return f"{type(net).__name__}:{getattr(net, 'name', '')}:{getattr(net, 'precision', 'fp32')}"

    return {"method": type(model).__name__, "vlm": encoder(model.vlm), "vm": encoder(model.vm),
            "config": model.config.as_dict(), "classes": model_classes, "names": names}


def segment_paths(model, paths: Sequence[str | os.PathLike | ImageJob], classes: Sequence[str] | str, *,
                  out: str | os.PathLike, background: bool = False, skip_done: bool = True,
                  glob: str | None = None, save_scores: bool = False, batch_size: int = 1,
                  rank: int = 0, world_size: int = 1, progress: bool = False) -> Iterator[ImageResult]:
    """Segment the images of files and folders into ``out``; yields one :class:`ImageResult` per
    image of this rank's share, in input order.

    Parameters
    ----------
    model : an :class:`~segmentation.LPOSS` or :class:`~segmentation.MaskCLIP`
    paths : image files and folders (searched recursively, see :func:`find_images`), or the jobs
        :func:`find_images` gave
    classes : class names (``;`` separates synonyms) or one comma-separated str
    out : output folder; the outputs mirror each input folder's tree
    background : add a ``background`` class first (label 0) made of the VOC background synonyms
    skip_done : skip an image whose outputs all exist (``False``: redo and overwrite everything)
    glob : keep only the folder images whose relative path matches (``"*.jpg"``, ``"2024/*"``)
    save_scores : also write ``<name>_scores.npy``, the (classes, H, W) float32 scores
    batch_size : images whose windows go through the networks in one batch
    rank, world_size : this process's share of the images (torchrun: RANK, WORLD_SIZE)
    progress : a tqdm bar over this rank's images, with the ETA

    The inputs, the class list and ``out`` are checked before this returns (BatchInputError,
    ValueError: one line); the images are segmented as the iterator is consumed.
    """
    check_positive_int("batch_size", batch_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    model_classes, names = class_lists(classes, background)
    if len(names) > 256:
        raise ValueError(f"a palette label PNG holds at most 256 classes, got {len(names)}")
    if isinstance(paths, (list, tuple)) and paths and all(isinstance(p, ImageJob) for p in paths):
        jobs = list(paths)  # already found (find_images)
    else:
        jobs = find_images(paths, glob=glob, out=out)  # type: ignore[arg-type]
    out = check_output_folder(out)
    _check_settings(out, _settings(model, model_classes, names), overwrite=not skip_done, write=rank == 0)
    batches = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]
    mine = [batch for j, batch in enumerate(batches) if j % world_size == rank]
    return _run(model, mine, model_classes, names, out, skip_done, save_scores, progress)


def _run(model, batches: list[list[ImageJob]], model_classes, names, out: Path, skip_done: bool,
         save_scores: bool, progress: bool) -> Iterator[ImageResult]:
    from tqdm.auto import tqdm

    from .preprocess import load_image

    text = model.vlm.encode_text(model_classes)  # once for the whole run
    bar = tqdm(total=sum(map(len, batches)), desc="images", unit="image", disable=not progress, dynamic_ncols=True)

    def on_stage(name: str) -> None:
        bar.set_postfix_str(name, refresh=True)

    try:
        for batch in batches:
            loaded: list[tuple[ImageJob, torch.Tensor, float]] = []
            for job in batch:
                outputs = job.outputs(out, save_scores)
                start = time.perf_counter()
                if skip_done and all(path.is_file() for path in outputs.values()):
                    try:
                        labels = _read_labels(outputs["labels"])
                    except (OSError, ValueError) as error:
                        labels = None
                        reason = f"its outputs exist but {error}"  # open_image's error names the file
                    else:
                        reason = "its outputs exist"
                    shares = [] if labels is None else _shares(labels, names)
                    bar.update()
                    yield ImageResult(job, "skipped", outputs, labels, shares, time.perf_counter() - start, reason)
                    continue
                try:
                    loaded.append((job, load_image(job.source), time.perf_counter() - start))
                except (OSError, ValueError, TypeError) as error:
                    message = (str(error) if str(job.source) in str(error)
                               else f"cannot read image {job.source}: {error}")
                    bar.update()
                    yield ImageResult(job, "failed", outputs, seconds=time.perf_counter() - start, reason=message)
            if not loaded:
                continue
            features = model.encode_batch([image for _, image, _ in loaded], on_stage=on_stage)
            for (job, image, load_seconds), feature in zip(loaded, features, strict=True):
                start = time.perf_counter()
                outputs = job.outputs(out, save_scores)
                try:
                    scores = model.predict(feature, text, on_stage=on_stage)
                    labels = scores.argmax(0)
                    _write_outputs(outputs, image, labels, scores, names)
                except (OSError, ValueError, RuntimeError) as error:
                    bar.update()
                    yield ImageResult(job, "failed", outputs, seconds=time.perf_counter() - start,
                                      reason=f"{job.source}: {error}")
                    continue
                seconds = load_seconds + sum(feature.timings.values()) + time.perf_counter() - start
                bar.update()
                yield ImageResult(job, "done", outputs, labels.cpu(), _shares(labels, names), seconds)
    finally:
        bar.close()


# --------------------------------------------------------------------------- the run's summary
def summary_document(entries: list[dict], names: list[str], model_classes: list[str], *, out: Path,
                     seconds: float, world_size: int = 1) -> dict:
    """The summary JSON of a run: its classes, counts, images per second and one entry per image
    (:meth:`ImageResult.summary`, in input order)."""
    counts = {status: sum(e["status"] == status for e in entries) for status in ("done", "skipped", "failed")}
    return {
        "out": str(out),
        "classes": names,
        "class_synonyms": model_classes,
        **counts,
        "seconds": round(seconds, 3),
        "images_per_second": round(counts["done"] / seconds, 4) if seconds > 0 and counts["done"] else None,
        "world_size": world_size,
        "images": entries,
    }
