"""Deprecated: ``lposs segment`` is :mod:`segmentation.commands.segment`; the example is
:mod:`segmentation.examples`. ``python -m segmentation.segment`` is the entry point for ``torchrun``."""

from ._deprecated import alias_getattr

__getattr__ = alias_getattr(__name__, {
    "add_segment_arguments": "segmentation.commands.segment:add_arguments",
    "run_segment": "segmentation.commands.segment:run",
    "main": "segmentation.commands.segment:main",
    "PROG": "segmentation.commands.segment:PROG",
    "DEFAULT_CLASSES": "segmentation.examples:DEFAULT_CLASSES",
    "EXAMPLE_IMAGE": "segmentation.examples:EXAMPLE_IMAGE",
})
