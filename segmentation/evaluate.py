"""``lposs evaluate``: mIoU (and boundary IoU) of LPOSS / LPOSS+ / MaskCLIP on a benchmark.

One process::

    lposs evaluate --dataset voc --data-root /data

Many GPUs or machines (the images are sharded over the ranks, the confusion matrices summed; the
result is the same as one process's)::

    torchrun --nproc-per-node 4 -m segmentation.evaluate --dataset voc --data-root /data

Progress is saved after every image in ``<output>.partial/``; ``--resume`` goes on from there
without redoing finished images and gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ._command_common import add_model_arguments, build_segmenter, read_class_list

PROG = "lposs evaluate"


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from .datasets import DATASETS

    parser.add_argument("--dataset", required=True,
                        help=f"{', '.join(sorted(DATASETS))}, or custom (with --images, --labels and --classes)")
    parser.add_argument("--data-root", help="the folder holding the datasets (layouts in the README)")
    add_model_arguments(parser)
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (in the dataset's order)")
    parser.add_argument("--measure-boundary", action="store_true", help="also measure boundary IoU")
    parser.add_argument("--output", help="results JSON (default: lposs-results/<dataset>-<method>.json)")
    parser.add_argument("--save-predictions", metavar="DIR",
                        help="write one PNG per image, <image stem>.png, pixel value = class index")
    parser.add_argument("--resume", action="store_true",
                        help="go on from the progress an interrupted run saved beside --output")
    custom = parser.add_argument_group("custom datasets (--dataset custom)")
    custom.add_argument("--images", help="folder of images")
    custom.add_argument("--labels", help="folder of label PNGs with the images' names (255 = ignore)")
    custom.add_argument("--classes", help="class names, ',' between classes, ';' between synonyms")
    custom.add_argument("--classes-file", help="a file with one class per line")
    custom.add_argument("--img-suffix", help="the images' suffix (default: found in --images)")
    custom.add_argument("--ann-suffix", default=".png", help="the labels' suffix (default .png)")
    custom.add_argument("--reduce-zero-label", action="store_true",
                        help="label 0 is ignored and every other label drops by one")


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- distributed
class _Dist:
    """Rank, world size and the collectives, or their one-process stand-ins."""

    def __init__(self, device: str | None):
        import torch
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
            if cuda:
                torch.cuda.set_device(local)
                self.device = f"cuda:{local}"
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        self.active = self.world > 1

    def gather(self, value) -> list:
        if not self.active:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.destroy_process_group()


# --------------------------------------------------------------------------- state
def _peak_memory_mb(device) -> dict:
    import resource

    import torch

    peak = {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        peak["cuda"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def _save_state(path: Path, state: dict) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("lposs", "torch", "open_clip_torch", "timm", "numpy", "numba", "pillow"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def _nan_to_none(values):
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


# --------------------------------------------------------------------------- one image
def _evaluate_sample(model, dataset, index: int, classes, metrics, timings: dict, save_dir: Path | None):
    """Predict one image, add it to the metrics, write its prediction. Raises ValueError / OSError
    for an image or label that cannot be read."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from .pipeline import StageTimer
    from .render import label_image

    sample = dataset[index]
    start = time.perf_counter()
    image, label = dataset.load(index)
    timings["load"] = timings.get("load", 0.0) + time.perf_counter() - start
    timer = StageTimer(timings)  # adds each stage's seconds into ``timings``
    scores = model.predict(image, classes, on_stage=timer)
    timer.stop()
    start = time.perf_counter()
    if scores.shape[1:] != label.shape:  # an image and label of different sizes: score at the label's
        scores = F.interpolate(scores[None], size=tuple(label.shape), mode="bilinear", align_corners=False)[0]
    prediction = scores.argmax(0)
    metrics.update(prediction, label.to(prediction.device))
    if save_dir is not None:
        target = save_dir / sample.folder / f"{sample.name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if len(classes) <= 256:  # a palette PNG; a 16-bit greyscale PNG for longer class lists
            label_image(prediction.to(torch.uint8), len(classes)).save(target)
        else:
            Image.fromarray(prediction.cpu().numpy().astype(np.uint16)).save(target)
    timings["metrics"] = timings.get("metrics", 0.0) + time.perf_counter() - start


# --------------------------------------------------------------------------- the command
def _dataset(args):
    from .datasets import custom_dataset, load_dataset

    if args.dataset.lower() == "custom":
        classes = read_class_list(args.classes, args.classes_file)
        if not args.images or not args.labels or classes is None:
            raise ValueError("--dataset custom needs --images DIR, --labels DIR and --classes (or --classes-file)")
        return custom_dataset(args.images, args.labels, classes, img_suffix=args.img_suffix,
                              ann_suffix=args.ann_suffix, reduce_zero_label=args.reduce_zero_label)
    if args.classes or args.classes_file or args.images or args.labels:
        raise ValueError("--images, --labels and --classes are for --dataset custom; "
                         f"{args.dataset} has its published class list")
    if not args.data_root:
        raise ValueError(f"give --data-root, the folder holding {args.dataset} (layouts in the README)")
    return load_dataset(args.dataset, args.data_root)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status (0 done, 2 bad input, 130 interrupted)."""
    import torch
    from tqdm.auto import tqdm

    import encoders

    from .datasets import DatasetLayoutError
    from .metrics import SegmentationMetrics

    if args.limit is not None and args.limit < 1:
        _error("--limit must be a positive integer")
        return 2
    try:
        dataset = _dataset(args)
    except (DatasetLayoutError, ValueError) as error:
        _error(str(error))
        return 2
    classes = list(dataset.classes)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    output = Path(args.output or f"lposs-results/{dataset.info.name}-{args.method}.json")
    try:
        dist = _Dist(args.device)
    except (RuntimeError, ValueError) as error:
        _error(f"cannot start torch.distributed: {error}")
        return 2
    try:
        try:
            model = build_segmenter(args.method, args.vlm, args.vm, device=dist.device, random_init=args.random_init,
                                    resize=args.resize, precision=args.precision, prog=PROG)
        except (encoders.WeightsUnavailableError, ValueError, TypeError) as error:
            _error(str(error))
            return 2

        fingerprint = hashlib.sha256(json.dumps({
            "dataset": dataset.info.name, "root": str(dataset.root.resolve()), "classes": classes, "count": count,
            "method": args.method, "vlm": args.vlm, "vm": args.vm, "random_init": args.random_init,
            "precision": args.precision,
            "config": model.config.as_dict(), "boundary": args.measure_boundary, "world": dist.world,
        }, sort_keys=True).encode()).hexdigest()
        state_path = output.with_name(output.name + ".partial") / f"rank{dist.rank}-of-{dist.world}.pt"
        metrics = SegmentationMetrics(len(classes), boundary=args.measure_boundary)
        done: set[str] = set()
        skipped: list[dict] = []
        timings: dict[str, float] = {}
        if args.resume and state_path.is_file():
            state = torch.load(state_path, weights_only=False)
            if state["fingerprint"] != fingerprint:
                _error(f"{state_path} was saved by a run with other settings; rerun without --resume to start over")
                return 2
            metrics.load_state_dict(state["metrics"])
            done, skipped, timings = set(state["done"]), list(state["skipped"]), dict(state["timings"])
        elif args.resume and dist.rank == 0:
            print(f"{PROG}: nothing to resume in {state_path.parent}; starting from the first image", file=sys.stderr)

        start = time.perf_counter()
        model.vlm.encode_text(classes)  # once per run; every image then finds it in memory
        timings["text"] = timings.get("text", 0.0) + time.perf_counter() - start

        shard = [i for i in range(count) if i % dist.world == dist.rank]
        todo = [i for i in shard if dataset[i].key not in done]
        save_dir = Path(args.save_predictions) if args.save_predictions else None
        bar = tqdm(todo, desc=f"{dataset.info.name} ({args.method})", unit="image", disable=dist.rank != 0,
                   initial=len(shard) - len(todo), total=len(shard))

        def save():
            _save_state(state_path, {"fingerprint": fingerprint, "metrics": metrics.state_dict(),
                                     "done": sorted(done), "skipped": skipped, "timings": timings})

        save()  # from here on a --resume knows these settings, even if the first image is interrupted
        evaluated = 0
        loop_start = time.perf_counter()
        try:
            for index in bar:
                sample = dataset[index]
                try:
                    _evaluate_sample(model, dataset, index, classes, metrics, timings, save_dir)
                    evaluated += 1
                except (OSError, ValueError) as error:
                    skipped.append({"image": str(sample.image), "error": str(error)})
                    tqdm.write(f"{PROG}: skipped {sample.image}: {error}", file=sys.stderr)
                done.add(sample.key)
                save()
                if dist.rank == 0:
                    bar.set_postfix_str(f"mIoU {metrics.compute()['miou']:.2f}", refresh=False)
        except KeyboardInterrupt:
            bar.close()
            _error(f"interrupted; the progress is saved: rerun with --resume to go on ({state_path.parent})")
            return 130
        bar.close()
        seconds = time.perf_counter() - loop_start

        metrics.all_reduce()  # metrics.images: every image evaluated, resumed ones included
        gathered = dist.gather({"skipped": skipped, "evaluated": evaluated, "seconds": seconds,
                                "timings": timings, "peak": _peak_memory_mb(dist.device)})
        if dist.rank == 0:
            result = _report(args, dataset, classes, count, model, metrics, gathered, dist.world)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(f"results: {output}")
        dist.barrier()
        state_path.unlink(missing_ok=True)
        dist.barrier()
        if dist.rank == 0:
            try:
                state_path.parent.rmdir()
            except OSError:
                pass
        return 0
    finally:
        dist.close()


def _report(args, dataset, classes, count, model, metrics, gathered, world) -> dict:
    scores = metrics.compute()
    names = [c.split(";")[0] for c in classes]
    evaluated = metrics.images
    this_run = sum(g["evaluated"] for g in gathered)  # a resumed run's speed counts its own images only
    seconds = max(g["seconds"] for g in gathered)
    timings: dict[str, float] = {}
    for g in gathered:
        for key, value in g["timings"].items():
            timings[key] = timings.get(key, 0.0) + value
    skipped = [s for g in gathered for s in g["skipped"]]

    boundary = args.measure_boundary
    width = max(len(n) for n in names)
    header = f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}" + (f"  {'BIoU':>6}" if boundary else "")
    print(header)
    print("-" * len(header))
    for i, name in enumerate(names):
        row = f"{name:<{width}}  {scores['per_class_iou'][i]:6.2f}  {scores['per_class_accuracy'][i]:6.2f}"
        if boundary:
            row += f"  {scores['per_class_boundary_iou'][i]:6.2f}"
        print(row)
    summary = (f"{dataset.info.name} {args.method}: mIoU {scores['miou']:.2f}, pixel accuracy "
               f"{scores['pixel_accuracy']:.2f}")
    if boundary:
        summary += f", boundary IoU {scores['boundary_iou']:.2f}"
    summary += f" ({evaluated} images, {len(skipped)} skipped, {this_run / seconds if seconds else 0:.2f} images/s)"
    print(summary)

    result = {
        "dataset": dataset.info.name,
        "method": args.method,
        "vlm": args.vlm,
        "vm": args.vm,
        "random_init": args.random_init,
        "config": model.config.as_dict(),
        "classes": classes,
        "images": count,
        "evaluated": evaluated,
        "skipped": len(skipped),
        "skipped_images": skipped,
        "miou": scores["miou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "per_class_iou": dict(zip(names, _nan_to_none(scores["per_class_iou"]), strict=True)),
        "per_class_accuracy": dict(zip(names, _nan_to_none(scores["per_class_accuracy"]), strict=True)),
        "confusion_matrix": metrics.confusion.cpu().tolist(),  # rows: ground truth, columns: prediction
    }
    if boundary:
        result["boundary_iou"] = scores["boundary_iou"]
        result["per_class_boundary_iou"] = dict(zip(names, _nan_to_none(scores["per_class_boundary_iou"]), strict=True))
    result.update({
        "images_per_second": this_run / seconds if seconds else None,
        "seconds": {key: round(value, 3) for key, value in timings.items()},
        "peak_memory_mb": {key: max(g["peak"].get(key, 0.0) for g in gathered) for key in gathered[0]["peak"]},
        "world_size": world,
        "device": str(getattr(model.vlm, "device", "cpu")),
        "precision": getattr(model.vlm, "precision", "fp32"),
        "versions": _versions(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    for key in ("miou", "pixel_accuracy", "boundary_iou"):
        if key in result and isinstance(result[key], float) and math.isnan(result[key]):
            result[key] = None
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m segmentation.evaluate`` (and under ``torchrun``): the flags of ``lposs evaluate``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_evaluate_arguments(parser)
    return run_evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
