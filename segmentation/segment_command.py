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

from ._command_common import add_model_arguments, build_segmenter, read_class_list

PROG = "lposs segment"
EXAMPLE_IMAGE = Path(__file__).resolve().parent / "data" / "example.jpg"
DEFAULT_CLASSES = "building;temple;roof,tree,sky,ground;road;pavement"


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``lposs segment`` (and ``python -m segmentation.segment``)."""
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files and folders (searched recursively; default: the shipped example)")
    parser.add_argument("--classes", help=f"class names, ',' between classes, ';' between synonyms "
                                          f"(default for the example: {DEFAULT_CLASSES!r})")
    parser.add_argument("--classes-file", help="a file with one class per line (';' between synonyms)")
    parser.add_argument("--background", action="store_true",
                        help="add a 'background' class (label 0) made of the published VOC background synonyms "
                             "(sky, wall, tree, road, ...), for the pixels of none of the classes")
    add_model_arguments(parser)
    parser.add_argument("--out", default="lposs-output",
                        help="output folder, mirroring each input folder's tree (default: ./lposs-output)")
    parser.add_argument("--glob", metavar="PATTERN",
                        help="in folders, only the images whose relative path matches (e.g. '*.jpg', '2024/*')")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every image (by default an image whose outputs all exist is skipped)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images whose windows go through the networks in one batch (default 1)")
    parser.add_argument("--save-scores", action="store_true",
                        help="also write <name>_scores.npy, the (classes, H, W) float32 scores")
    parser.add_argument("--summary", metavar="FILE",
                        help="the run's summary JSON (default: <out>/summary.json)")
    parser.add_argument("--coco-json", metavar="FILE",
                        help='also write the labels as one COCO file (RLE masks; pip install "lposs[coco]")')


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _class_list(args: argparse.Namespace) -> list[str]:
    classes = read_class_list(args.classes, args.classes_file)
    if classes is not None:
        return classes
    if args.images:
        raise ValueError('give the class names: --classes "road,car,sky;cloud" (or --classes-file)')
    return read_class_list(DEFAULT_CLASSES, None)


def run_segment(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status (0 ok, 1 some image failed, 2 bad input, 130
    interrupted)."""
    import encoders

    from . import batch
    from .coco import _mask_api
    from .evaluate import _Dist

    try:
        classes = _class_list(args)
        model_classes, names = batch.class_lists(classes, args.background)
        jobs = batch.find_images(args.images or [EXAMPLE_IMAGE], glob=args.glob, out=args.out)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
        if args.coco_json:
            _mask_api()
    except (ValueError, TypeError, ImportError) as error:
        _error(str(error))
        return 2
    try:
        dist = _Dist(args.device)
    except (RuntimeError, ValueError) as error:
        _error(f"cannot start torch.distributed: {error}")
        return 2
    try:
        try:
            model = build_segmenter(args.method, args.vlm, args.vm, device=dist.device, random_init=args.random_init,
                                    resize=args.resize, precision=args.precision, prog=PROG)
            results = batch.segment_paths(
                model, jobs, classes, out=args.out, background=args.background, skip_done=not args.overwrite,
                save_scores=args.save_scores, batch_size=args.batch_size, rank=dist.rank, world_size=dist.world,
                progress=True)
        except (encoders.WeightsUnavailableError, ValueError, TypeError) as error:
            _error(str(error))
            return 2
        try:
            entries, coco_images, annotations, seconds = _consume(results, names, bool(args.coco_json))
        except KeyboardInterrupt:
            _error("interrupted; rerun the same command to go on (finished images are skipped)")
            return 130
        gathered = dist.gather((entries, coco_images, annotations, seconds))
        entries = sorted((e for g in gathered for e in g[0]), key=lambda e: e["index"])
        failed = sum(e["status"] == "failed" for e in entries)
        if dist.rank == 0:
            out = Path(args.out)
            summary = Path(args.summary) if args.summary else out / "summary.json"
            for entry in entries:
                del entry["index"]
            document = batch.summary_document(entries, names, model_classes, out=out,
                                              seconds=max(g[3] for g in gathered), world_size=dist.world)
            batch.write_json(summary, document)
            counts = f"{document['done']} done, {document['skipped']} skipped, {document['failed']} failed"
            print(f"{counts}; summary: {summary}")
            if args.coco_json:
                from .coco import coco_document

                images = sorted((i for g in gathered for i in g[1]), key=lambda i: i["id"])
                anns = sorted((a for g in gathered for a in g[2]), key=lambda a: (a["image_id"], a["category_id"]))
                batch.write_json(args.coco_json, coco_document(images, names, anns))
                print(f"COCO annotations: {args.coco_json}")
        dist.barrier()
        return 1 if failed else 0
    finally:
        dist.close()


def _consume(results, names: list[str], coco: bool):
    """Print a line per image, keep its summary entry and COCO records (the labels are dropped)."""
    from tqdm.auto import tqdm

    from .coco import coco_image, label_annotations

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
    add_segment_arguments(parser)
    return run_segment(parser.parse_args(argv))
