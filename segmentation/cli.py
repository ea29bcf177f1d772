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
- ``lposs prepare-coco DATA_ROOT``: the COCO-Stuff and COCO-Object label files ``lposs evaluate``
  reads, from COCO-Stuff's stuffthingmaps (``python -m segmentation.datasets prepare-coco`` runs the same).

Each command is a module of :mod:`segmentation.commands`; :data:`COMMANDS` lists them.
"""

from __future__ import annotations

import argparse
import sys

from .commands import demo, evaluate, graph_example, prepare_coco, segment

__all__ = ["COMMANDS", "build_parser", "main"]

#: The commands in the order ``lposs --help`` lists them: each module has NAME, HELP, DESCRIPTION,
#: ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS = (segment, evaluate, demo, prepare_coco, graph_example)


def build_parser() -> argparse.ArgumentParser:
    """The ``lposs`` parser: one sub-parser per entry of :data:`COMMANDS` (``args.command`` names it)."""
    parser = argparse.ArgumentParser(
        prog="lposs",
        description=(
            "Training-free open-vocabulary semantic segmentation (LPOSS / LPOSS+) "
            "built on the graphprop label-propagation library."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.NAME, help=command.HELP, description=command.DESCRIPTION)
        command.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the command; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    by_name = {command.NAME: command for command in COMMANDS}
    return by_name[args.command].run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
