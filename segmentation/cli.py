"""The ``lposs`` command line.

Commands that exist so far:

- ``lposs graph-example``: label propagation on a small built-in graph problem
  (the graphprop library's example; ``python -m graphprop`` runs the same).

``lposs segment``, ``lposs evaluate`` and ``lposs demo`` come with the
segmentation, evaluation and demo work.
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
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
