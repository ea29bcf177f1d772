"""``lposs demo``: a local web page (Gradio) to segment your own images with your own words.

- :mod:`segmentation.demo.app`: :class:`DemoApp`, the page's logic without a server (encode an image
  once, relabel it with any classes / method / settings, render the overlay, legend and files).
- :mod:`segmentation.demo.page`: :func:`build_app` (the Gradio page), :func:`launch` and
  :func:`run_demo` (the command). Gradio is an optional extra, imported only there, when needed.
"""

from .app import DemoApp, DemoInputError, DemoResult, EncodedImage
from .page import add_demo_arguments, build_app, launch, run_demo

__all__ = ["DemoApp", "DemoInputError", "DemoResult", "EncodedImage", "add_demo_arguments", "build_app", "launch",
           "run_demo"]
