"""``lposs prepare-coco DATA_ROOT``: COCO-Stuff and COCO-Object label files from the stuffthingmaps.

``python -m segmentation.datasets prepare-coco DATA_ROOT``, the form the first releases documented,
runs the same command.
"""

from __future__ import annotations

import argparse

from ..datasets import DatasetLayoutError, prepare_coco
from ._common import CommandError, run_command

__all__ = ["DESCRIPTION", "HELP", "NAME", "PROG", "add_arguments", "main", "run"]

NAME = "prepare-coco"
PROG = f"lposs {NAME}"  # the program named in its error lines
HELP = "write the COCO-Stuff and COCO-Object label files lposs evaluate reads"
DESCRIPTION = ("Convert COCO-Stuff 164k's stuffthingmaps (DATA_ROOT/coco_stuff164k/annotations/SPLIT/*.png) into "
               "the train-id label files of coco_stuff (171 classes) and coco_object (80 things and a background), "
               "written beside each map. Maps already converted are skipped.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``DATA_ROOT``, ``--split`` and ``--overwrite`` to ``parser``."""
    parser.add_argument("data_root", metavar="DATA_ROOT", help="the folder holding coco_stuff164k/")
    parser.add_argument("--split", default="val2017", help="the annotations' sub-folder (default val2017)")
    parser.add_argument("--overwrite", action="store_true", help="convert maps already converted too")


def run(args: argparse.Namespace, prog: str = PROG) -> int:
    """Convert the maps and print how many there are; returns the exit status (0, or 2 on bad input,
    with one ``<prog>: error: ...`` line)."""
    return run_command(prog, _prepare, args)


def _prepare(args: argparse.Namespace) -> int:
    try:
        count = prepare_coco(args.data_root, split=args.split, overwrite=args.overwrite)
    except (DatasetLayoutError, ValueError, OSError) as bad:  # OSError: a label file that cannot be written
        raise CommandError(str(bad)) from None
    print(f"{count} label maps in place (coco_stuff and coco_object)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m segmentation.datasets prepare-coco DATA_ROOT``: the flags of ``lposs prepare-coco``."""
    parser = argparse.ArgumentParser(prog="python -m segmentation.datasets",
                                     description="Prepare datasets for lposs evaluate.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_arguments(commands.add_parser(NAME, help=HELP, description=DESCRIPTION))
    return run(parser.parse_args(argv), prog=f"python -m segmentation.datasets {NAME}")
