"""The ``lposs`` command line.

- ``lposs segment [IMAGE|DIR ...] --classes "road,car,sky;cloud"``: segment images and folders
  (with no IMAGE, the shipped example); writes label and overlay PNGs, a summary JSON and
  optionally a COCO file, and prints the classes found (``python -m segmentation.segment`` under
  ``torchrun`` for many processes).
- ``lposs graph-example``: label propagation on a small built-in graph problem
  (the graphprop library's example; ``python -m graphprop`` runs the same).
- ``lposs evaluate --dataset voc --data-root DIR``: mIoU on one of the paper's benchmarks
  (``python -m segmentation.evaluate`` under ``torchrun`` for many processes).
- ``lposs demo``: a local web page to segment your own images interactively (Gradio, the
  ``demo`` extra).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lposs",
        description=(
            "Training-free open-vocabulary semantic segmentation (LPOSS / LPOSS+) "
            "built on the graphprop label-propagation library."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_segment_parser(commands)
    _add_evaluate_parser(commands)
    _add_demo_parser(commands)
    example = commands.add_parser(
        "graph-example",
        help="propagate labels on a small built-in graph (two half-moons) and report",
        description="Label propagation on two interleaved half-moons with one known label each.",
    )
    example.add_argument("--points", type=int, default=600, help="number of points (default 600)")
    example.add_argument("--k", type=int, default=10, help="neighbours per point (default 10)")
    example.add_argument("--alpha", type=float, default=0.99, help="propagation strength in (0, 1)")
    example.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def _add_segment_parser(commands) -> None:
    from .segment_command import add_segment_arguments

    segment = commands.add_parser(
        "segment",
        help="segment images and folders with any list of class names (LPOSS+ by default)",
        description=(
            "Label every pixel of each IMAGE (files, or folders searched recursively) with one of the given "
            "classes. Writes <name>_labels.png (palette PNG, pixel value = class index) and <name>_overlay.png "
            "(image, class colours, legend) into --out, mirroring each folder's tree, and a summary JSON. A rerun "
            "skips the images already done. torchrun --nproc-per-node N -m segmentation.segment takes the same "
            "flags to use N processes. With no IMAGE, runs on the example image shipped with the project."
        ),
    )
    add_segment_arguments(segment)


def _add_evaluate_parser(commands) -> None:
    from .evaluate import add_evaluate_arguments

    evaluate = commands.add_parser(
        "evaluate",
        help="mIoU (and boundary IoU) on one of the paper's eight benchmarks or your own dataset",
        description=(
            "Evaluate LPOSS+ / LPOSS / MaskCLIP on a benchmark with the published protocol: per-class IoU, "
            "mIoU, pixel accuracy and optionally boundary IoU, written to a JSON file. Resumable (--resume); "
            "torchrun --nproc-per-node N -m segmentation.evaluate takes the same flags to use N processes."
        ),
    )
    add_evaluate_arguments(evaluate)


def _add_demo_parser(commands) -> None:
    from .demo.page import add_demo_arguments

    demo = commands.add_parser(
        "demo",
        help='a local web page to segment your own images interactively (pip install "lposs[demo]")',
        description=(
            "Serve a page (Gradio) on this machine: upload an image or pick the example, type class names, "
            "pick LPOSS+ / LPOSS / MaskCLIP (--method: the one selected when the page opens) and the settings, "
            "get the overlay, the share of each class and the label PNG. Changing only the classes or settings "
            "re-uses the image's network features."
        ),
    )
    add_demo_arguments(demo)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "segment":
        from .segment_command import run_segment

        return run_segment(args)
    if args.command == "evaluate":
        from .evaluate import run_evaluate

        return run_evaluate(args)
    if args.command == "demo":
        from .demo.page import run_demo

        return run_demo(args)
    if args.command == "graph-example":
        from graphprop.examples import two_moons_demo

        if args.points < 4 or args.k < 1:
            parser.error("--points must be >= 4 and --k >= 1")
        try:
            two_moons_demo(args.points, args.k, args.alpha, args.seed)
        except (ValueError, TypeError) as exc:
            print(f"lposs graph-example: error: {exc}", file=sys.stderr)
            return 2
        return 0
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
