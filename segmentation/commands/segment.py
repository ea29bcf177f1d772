"""``lposs segment``: images and folders + class names -> label PNGs, overlays, a summary JSON,
optionally one COCO file; a thin shell around :func:`segmentation.batch.segment_paths`.

Under ``torchrun`` (``python -m segmentation.segment``) the images are sharded over the ranks and
rank 0 writes the summary and the COCO file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from graphprop._validation import check_positive_int

from ..classnames import read_class_list
from ..examples import DEFAULT_CLASSES, EXAMPLE_IMAGE
from ._common import CommandError, add_model_arguments, run_command, start_run

__all__ = ["DESCRIPTION", "HELP", "NAME", "PROG", "add_arguments", "main", "run"]

NAME = "segment"
PROG = f"lposs {NAME}"  # the program named in its error lines
HELP = "segment images and folders with any list of class names (LPOSS+ by default)"
DESCRIPTION = (
    "Label every pixel of each IMAGE (files, or folders searched recursively) with one of the given "
    "classes. Writes <name>_labels.png (palette PNG, pixel value = class index) and <name>_overlay.png "
    "(image, class colours, legend) into --out, mirroring each folder's tree, and a summary JSON. A rerun "
    "skips the images already done. torchrun --nproc-per-node N -m segmentation.segment takes the same "
    "flags to use N processes. With no IMAGE, runs on the example image shipped with the project."
)

# the output flags after the model's: (flag, options); a table, as every one is a plain add_argument
_OUTPUT_FLAGS: tuple[tuple[str, dict], ...] = (
    ("--out", {"default": "lposs-output",
               "help": "output folder, mirroring each input folder's tree (default: ./lposs-output)"}),
    ("--glob", {"metavar": "PATTERN",
                "help": "in folders, only the images whose relative path matches (e.g. '*.jpg', '2024/*')"}),
    ("--overwrite", {"action": "store_true",
                     "help": "redo every image (by default an image whose outputs all exist is skipped)"}),
    ("--batch-size", {"type": int, "default": 1,
                      "help": "images whose windows go through the networks in one batch (default 1)"}),
    ("--save-scores", {"action": "store_true",
                       "help": "also write <name>_scores.npy, the (classes, H, W) float32 scores"}),
    ("--summary", {"metavar": "FILE", "help": "the run's summary JSON (default: <out>/summary.json)"}),
    ("--coco-json", {"metavar": "FILE",
                     "help": 'also write the labels as one COCO file (RLE masks; pip install "lposs[coco]")'}),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``lposs segment`` (and ``python -m segmentation.segment``) to ``parser``."""
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files and folders (searched recursively; default: the shipped example)")
    parser.add_argument("--classes", help=f"class names, ',' between classes, ';' between synonyms "
                                          f"(default for the example: {DEFAULT_CLASSES!r})")
    parser.add_argument("--classes-file", help="a file with one class per line (';' between synonyms)")
    parser.add_argument("--background", action="store_true",
                        help="add a 'background' class (label 0) made of the published VOC background synonyms "
                             "(sky, wall, tree, road, ...), for the pixels of none of the classes")
    add_model_arguments(parser)
    for flag, options in _OUTPUT_FLAGS:
        parser.add_argument(flag, **options)


def _class_list(args: argparse.Namespace) -> list[str]:
    classes = read_class_list(args.classes, args.classes_file)
    if classes is not None:
        return classes
    if args.images:
        raise ValueError('give the class names: --classes "road,car,sky;cloud" (or --classes-file)')
    return read_class_list(DEFAULT_CLASSES, None)


def run(args: argparse.Namespace) -> int:
    """Run the command.

    Returns
    -------
    int
        The exit status: 0 ok, 1 some image failed, 2 bad input, 130 interrupted.
    """
    return run_command(PROG, _segment, args)


def _segment(args: argparse.Namespace) -> int:
    from .. import batch
    from ..coco import _mask_api

    try:
        classes = _class_list(args)
        model_classes, names = batch.class_lists(classes, args.background)
        jobs = batch.find_images(args.images or [EXAMPLE_IMAGE], glob=args.glob, out=args.out)
        check_positive_int("--batch-size", args.batch_size)
        if args.coco_json:
            _mask_api()
    except (ValueError, TypeError, ImportError) as bad:
        raise CommandError(str(bad)) from None
    with start_run(args, PROG) as (dist, model):
        try:
            results = batch.segment_paths(
                model, jobs, classes, out=args.out, background=args.background, skip_done=not args.overwrite,
                save_scores=args.save_scores, batch_size=args.batch_size, rank=dist.rank, world_size=dist.world,
                progress=True)
        except (ValueError, TypeError) as bad:
            raise CommandError(str(bad)) from None
        try:
            entries, coco_images, annotations, seconds = _consume(results, names, bool(args.coco_json))
        except KeyboardInterrupt:
            raise CommandError("interrupted; rerun the same command to go on (finished images are skipped)",
                               130) from None
        gathered = dist.gather((entries, coco_images, annotations, seconds))
        entries = sorted((e for g in gathered for e in g[0]), key=lambda e: e["index"])
        failed = sum(e["status"] == "failed" for e in entries)
        if dist.rank == 0:
            _write_summary(args, entries, names, model_classes, gathered, dist.world)
        dist.barrier()
        return 1 if failed else 0


def _write_summary(args: argparse.Namespace, entries: list[dict], names: list[str], model_classes: list[str],
                   gathered: list, world: int) -> None:
    """Rank 0: the summary JSON (and the COCO file) of every rank's images; prints where they are."""
    from .. import batch

    out = Path(args.out)
    summary = Path(args.summary) if args.summary else out / "summary.json"
    for entry in entries:
        del entry["index"]
    document = batch.summary_document(entries, names, model_classes, out=out,
                                      seconds=max(g[3] for g in gathered), world_size=world)
    batch.write_json(summary, document)
    counts = f"{document['done']} done, {document['skipped']} skipped, {document['failed']} failed"
    print(f"{counts}; summary: {summary}")
    if args.coco_json:
        from ..coco import coco_document

        images = sorted((i for g in gathered for i in g[1]), key=lambda i: i["id"])
        anns = sorted((a for g in gathered for a in g[2]), key=lambda a: (a["image_id"], a["category_id"]))
        batch.write_json(args.coco_json, coco_document(images, names, anns))
        print(f"COCO annotations: {args.coco_json}")


def _consume(results, names: list[str], coco: bool):
    """Print a line per image, keep its summary entry and COCO records (the labels are dropped)."""
    from tqdm.auto import tqdm

    from ..coco import coco_image, label_annotations

    entries, images, annotations = [], [], []
    start = time.perf_counter()
    for result in results:
        entry = result.summary()
        entry["index"] = result.job.index
        entries.append(entry)
        if result.status == "failed":
            tqdm.write(f"{PROG}: error: {result.reason}", file=sys.stderr)
            continue
        shares = ", ".join(f"{name} {share:.1f}%" for name, share in result.shares)
        if result.status == "skipped":
            tqdm.write(f"{result.source}: skipped, {result.reason}")
        else:
            tqdm.write(f"{result.source}: {shares} -> {result.outputs['overlay']}")
        if coco and result.labels is not None:
            image_id = result.job.index + 1
            height, width = result.labels.shape
            images.append(coco_image(image_id, str(result.relative), height, width))
            annotations.extend(label_annotations(result.labels, names, image_id=image_id))
    return entries, images, annotations, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """``python -m segmentation.segment`` (and under ``torchrun``): the flags of ``lposs segment``."""
    parser = argparse.ArgumentParser(prog=PROG, description="Segment images and folders with any class names.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
