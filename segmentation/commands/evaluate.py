"""``lposs evaluate``: mIoU (and boundary IoU) of a registered method on a benchmark.

One process::

    lposs evaluate --dataset voc --data-root /data

Many GPUs or machines (the images are sharded over the ranks, the confusion matrices summed; the
result is the same as one process's)::

    torchrun --nproc-per-node 4 -m segmentation.evaluate --dataset voc --data-root /data

Progress is saved after every image in ``<output>.partial/``; ``--resume`` goes on from there
without redoing finished images and gives the same result as an uninterrupted run. The work is
:mod:`segmentation.evaluation`; this module reads the flags and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from graphprop._validation import check_positive_int

from ..classnames import read_class_list
from ._common import CommandError, add_model_arguments, run_command, start_run

__all__ = ["DESCRIPTION", "HELP", "NAME", "PROG", "add_arguments", "main", "run"]

NAME = "evaluate"
PROG = f"lposs {NAME}"  # the program named in its error lines
HELP = "mIoU (and boundary IoU) on one of the paper's eight benchmarks or your own dataset"
DESCRIPTION = (
    "Evaluate a method (--method: LPOSS+, LPOSS, MaskCLIP or any registered one) on a benchmark with the "
    "published protocol: per-class IoU, mIoU, pixel accuracy and optionally boundary IoU, written to a JSON file. "
    "Resumable (--resume); torchrun --nproc-per-node N -m segmentation.evaluate takes the same flags to use N "
    "processes."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``lposs evaluate`` (and ``python -m segmentation.evaluate``) to ``parser``."""
    from ..datasets import DATASETS

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


def run(args: argparse.Namespace) -> int:
    """Run the command.

    Returns
    -------
    int
        The exit status: 0 done, 2 bad input, 130 interrupted.
    """
    return run_command(PROG, _evaluate, args)


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    if args.limit is not None:
        try:
            check_positive_int("--limit", args.limit)
        except ValueError as bad:
            raise CommandError(str(bad)) from None
    dataset = _dataset(args)
    classes = list(dataset.classes)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    output = Path(args.output or f"lposs-results/{dataset.info.name}-{args.method}.json")
    with start_run(args, PROG) as (dist, model):
        state = _open_state(args, dataset, classes, count, model, output, dist)
        _encode_text(model, classes, state.timings)
        shard = [i for i in range(count) if i % dist.world == dist.rank]
        todo = [i for i in shard if dataset[i].key not in state.done]
        state.save()  # from here on a --resume knows these settings, even if the first image is interrupted
        bar = tqdm(total=len(shard), initial=len(shard) - len(todo), desc=f"{dataset.info.name} ({args.method})",
                   unit="image", disable=dist.rank != 0)
        start = time.perf_counter()
        try:
            evaluated = _evaluate_shard(args, model, dataset, todo, classes, state, bar, dist.rank)
        except KeyboardInterrupt:
            raise CommandError(f"interrupted; the progress is saved: rerun with --resume to go on "
                               f"({state.path.parent})", 130) from None
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        _write_results(args, dataset, classes, count, model, state, output, dist,
                       {"evaluated": evaluated, "seconds": seconds})
        state.remove(folder=False)
        dist.barrier()
        if dist.rank == 0:
            state.remove(folder=True)
        return 0


def _dataset(args: argparse.Namespace):
    """The dataset the flags name (a benchmark under --data-root, or --dataset custom)."""
    from ..datasets import DatasetLayoutError, custom_dataset, load_dataset

    try:
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
    except (DatasetLayoutError, ValueError) as bad:
        raise CommandError(str(bad)) from None


def _open_state(args: argparse.Namespace, dataset, classes: list[str], count: int, model, output: Path, dist):
    """This rank's :class:`~segmentation.evaluation.EvaluationState`: resumed with --resume, else new."""
    from ..evaluation import EvaluationState, run_fingerprint
    from ..metrics import SegmentationMetrics

    fingerprint = run_fingerprint({
        "dataset": dataset.info.name, "root": str(dataset.root.resolve()), "classes": classes, "count": count,
        "method": args.method, "vlm": args.vlm, "vm": args.vm, "random_init": args.random_init,
        "precision": args.precision,
        "config": model.config.as_dict(), "boundary": args.measure_boundary, "world": dist.world,
    })
    state = EvaluationState(EvaluationState.path_for(output, dist.rank, dist.world), fingerprint,
                            SegmentationMetrics(len(classes), boundary=args.measure_boundary))
    if args.resume:
        try:
            resumed = state.resume()
        except ValueError as other:
            raise CommandError(str(other)) from None
        if not resumed and dist.rank == 0:
            print(f"{PROG}: nothing to resume in {state.path.parent}; starting from the first image", file=sys.stderr)
    return state


def _encode_text(model, classes: list[str], timings: dict[str, float]) -> None:
    """The class names' embeddings, once per run: every image then finds them in memory."""
    from ..pipeline import StageTimer

    timer = StageTimer(timings)
    timer("text")
    model.vlm.encode_text(classes)
    timer.stop()


def _evaluate_shard(args: argparse.Namespace, model, dataset, todo: list[int], classes: list[str], state, bar,
                    rank: int) -> int:
    """Evaluate this rank's images still to do, with the progress bar; returns how many were evaluated."""
    from tqdm.auto import tqdm

    from ..evaluation import loop

    save_dir = Path(args.save_predictions) if args.save_predictions else None
    evaluated = 0
    for sample, skipped in loop.evaluate_images(model, dataset, todo, classes, state, save_dir=save_dir):
        if skipped is None:
            evaluated += 1
        else:
            tqdm.write(f"{PROG}: skipped {sample.image}: {skipped}", file=sys.stderr)
        bar.update()
        if rank == 0:
            bar.set_postfix_str(f"mIoU {state.metrics.compute()['miou']:.2f}", refresh=False)
    return evaluated


def _write_results(args: argparse.Namespace, dataset, classes: list[str], count: int, model, state, output: Path,
                   dist, run_stats: dict) -> None:
    """Sum the ranks' metrics; rank 0 prints the table and writes the results JSON."""
    from ..evaluation.results import peak_memory_mb, results_document, results_table

    state.metrics.all_reduce()  # metrics.images: every image evaluated, resumed ones included
    gathered = dist.gather({"skipped": state.skipped, **run_stats, "timings": state.timings,
                            "peak": peak_memory_mb(dist.device)})
    if dist.rank != 0:
        return
    metrics = state.metrics
    scores = metrics.compute()
    names = [c.split(";")[0] for c in classes]
    boundary = args.measure_boundary
    run = {"dataset": dataset.info.name, "method": args.method, "vlm": args.vlm, "vm": args.vm,
           "random_init": args.random_init, "config": model.config.as_dict()}
    result = results_document(run, classes, scores, metrics.confusion.cpu().tolist(), boundary=boundary,
                              gathered=gathered, model=model, images=count, evaluated=metrics.images)
    for line in results_table(names, scores, boundary):
        print(line)
    summary = (f"{dataset.info.name} {args.method}: mIoU {scores['miou']:.2f}, pixel accuracy "
               f"{scores['pixel_accuracy']:.2f}")
    if boundary:
        summary += f", boundary IoU {scores['boundary_iou']:.2f}"
    speed = result["images_per_second"] or 0
    summary += f" ({metrics.images} images, {result['skipped']} skipped, {speed:.2f} images/s)"
    print(summary)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"results: {output}")


def main(argv: list[str] | None = None) -> int:
    """``python -m segmentation.evaluate`` (and under ``torchrun``): the flags of ``lposs evaluate``."""
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
