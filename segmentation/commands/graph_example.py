"""``lposs graph-example``: label propagation on a small built-in graph problem (``python -m graphprop``)."""

from __future__ import annotations

import argparse

from ._common import CommandError, run_command

__all__ = ["DESCRIPTION", "HELP", "NAME", "PROG", "add_arguments", "run"]

NAME = "graph-example"
PROG = f"lposs {NAME}"  # the program named in its error lines
HELP = "propagate labels on a small built-in graph (two half-moons) and report"
DESCRIPTION = "Label propagation on two interleaved half-moons with one known label each."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--points``, ``--k``, ``--alpha`` and ``--seed`` to ``parser``."""
    parser.add_argument("--points", type=int, default=600, help="number of points (default 600)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per point (default 10)")
    parser.add_argument("--alpha", type=float, default=0.99, help="propagation strength in (0, 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def run(args: argparse.Namespace) -> int:
    """Run the example; returns the exit status (0, or 2 on bad input)."""
    return run_command(PROG, _example, args)


def _example(args: argparse.Namespace) -> int:
    from graphprop.examples import two_moons_demo

    if args.points < 4 or args.k < 1:
        raise CommandError("--points must be >= 4 and --k >= 1")
    try:
        two_moons_demo(args.points, args.k, args.alpha, args.seed)
    except (ValueError, TypeError) as bad:
        raise CommandError(str(bad)) from None
    return 0
