"""``lposs demo``: serve the demo page (:mod:`segmentation.demo`) on this machine until Ctrl+C."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time

from ..demo.app import DEFAULT_MAX_PIXELS
from ..methods import get_method
from ._common import CommandError, add_model_arguments, run_command, segmenter_from_args

__all__ = ["DESCRIPTION", "HELP", "NAME", "PROG", "add_arguments", "run"]

NAME = "demo"
PROG = f"lposs {NAME}"  # the program named in its error lines
HELP = 'a local web page to segment your own images interactively (pip install "lposs[demo]")'


DESCRIPTION = (
    "Serve a page (Gradio) on this machine: upload an image or pick the example, type class names, "
    "pick a method (LPOSS+, LPOSS, MaskCLIP or any registered one; --method: the one selected when the page "
    "opens) and the settings, get the overlay, the share of each class and the label PNG. Changing only the "
    "classes or settings re-uses the image's network features."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model options of every command (--method is the one selected when the page opens) and the
    server's (--host, --port, --max-pixels) to ``parser``."""
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
                             "the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--max-pixels", type=float, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:.0e}, i.e. 20 megapixels)")


def run(args: argparse.Namespace) -> int:
    """Serve the page until Ctrl+C.

    Returns
    -------
    int
        The exit status: 0, or 2 on bad options or a missing extra.
    """
    return run_command(PROG, _demo, args)


def _demo(args: argparse.Namespace) -> int:
    from ..demo.app import DemoApp
    from ..demo.page import _import_gradio, build_app, launch

    try:
        _import_gradio()
    except ImportError as missing:
        raise CommandError(str(missing)) from None
    if not 0 < args.port < 65536 or not args.max_pixels >= 1:
        raise CommandError(f"--port must be in 1..65535 and --max-pixels >= 1, got {args.port} and "
                           f"{args.max_pixels:g}")
    model = segmenter_from_args(args, PROG, method="lposs+")  # the page switches methods: both encoders
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = int(args.max_pixels)  # PIL's decompression-bomb guard agrees with the page's limit
    app = DemoApp(model.vlm, model.vm, model.config, max_pixels=int(args.max_pixels))
    notice = "Random weights (--random-init): the labels are meaningless." if args.random_init else None
    blocks = build_app(app, method=get_method(args.method).display_name, notice=notice)
    try:  # Ctrl+C at any point from here stops the server cleanly
        try:
            _, url, _ = launch(blocks, app, host=args.host, port=args.port, block=False)
        except OSError as busy:
            raise CommandError(f"cannot serve on {args.host}:{args.port}: {busy}") from None
        try:
            loopback = ipaddress.ip_address(args.host).is_loopback
        except ValueError:
            loopback = args.host == "localhost"
        if not loopback:
            print(f"{PROG}: warning: serving on {args.host}: other machines can reach this page", file=sys.stderr)
        print(f"{PROG}: open {url} in a browser (Ctrl+C stops the server)", flush=True)
        while blocks.is_running:  # Gradio's block_thread(), without its message
            time.sleep(0.1)
    except KeyboardInterrupt:
        print(f"{PROG}: stopped", file=sys.stderr)
    finally:
        blocks.close(verbose=False)
    return 0
