"""``lposs demo``: a local web page (Gradio) to segment your own images with your own words.

- :mod:`segmentation.demo.app`: :class:`DemoApp`, the page's logic without a server (encode an image
  once, relabel it with any classes / method / settings, render the overlay, legend and files).
- :mod:`segmentation.demo.page`: :func:`build_app` (the Gradio page) and :func:`launch`. Gradio is
  an optional extra, imported only there, when needed.

The ``lposs demo`` command that serves the page is :mod:`segmentation.commands.demo`.
"""

from .app import DemoApp, DemoInputError, DemoResult, EncodedImage
from .page import build_app, launch

__all__ = ["DemoApp", "DemoInputError", "DemoResult", "EncodedImage", "build_app", "launch"]


def __getattr__(name: str):
    if name in ("add_demo_arguments", "run_demo"):  # deprecated aliases (the command moved)
        from . import page

        return getattr(page, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
