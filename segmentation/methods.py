"""The segmentation methods users pick by name: one registry that the CLI, the demo and evaluation read.

>>> from segmentation.methods import available_methods, get_method
>>> [method.name for method in available_methods()]
['lposs+', 'lposs', 'maskclip']
>>> get_method("lposs").display_name
'LPOSS'

A new method is one :func:`register_method` call; ``lposs segment --method``, ``lposs evaluate
--method`` and the demo's method buttons then offer it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Method", "available_methods", "get_method", "register_method"]

Builder = Callable[[Any, Any, Any], Any]


@dataclass(frozen=True)
class Method:
    """One segmentation method.

    Attributes
    ----------
    name : str
        What the CLI takes (``--method NAME``).
    display_name : str
        What the demo page shows (and :meth:`segmentation.demo.DemoApp.model` takes).
    description : str
        A few words on what it does (the CLI's help and the demo's method line).
    builder : callable
        ``builder(vlm, vm, config) -> segmenter``: the model around the built encoders; ``vm`` is
        None when ``uses_vm`` is False. ``config`` is an :class:`~segmentation.pipeline.LPOSSConfig`;
        the segmenter has ``predict(image, class_names, on_stage=...)``, ``encode``, ``stages``,
        ``vlm``, ``vm`` and ``config`` as :class:`~segmentation.pipeline.LPOSS` has.
    uses_vm : bool
        Whether the method needs the vision encoder (``--vm``); False spares building it.
    """

    name: str
    display_name: str
    description: str
    builder: Builder
    uses_vm: bool = True

    def build(self, vlm, vm, config):
        """The segmenter around ``vlm`` (and ``vm``, when :attr:`uses_vm`) with ``config``."""
        return self.builder(vlm, vm if self.uses_vm else None, config)


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry; returns it.

    Raises
    ------
    TypeError
        ``method`` is not a :class:`Method`.
    ValueError
        Its name or its display name is taken already.
    """
    if not isinstance(method, Method):
        raise TypeError(f"register_method takes a Method, got {type(method).__name__}")
    if method.name in _REGISTRY:
        raise ValueError(f"a method named {method.name!r} is registered already")
    if any(m.display_name == method.display_name for m in _REGISTRY.values()):
        raise ValueError(f"a method displayed as {method.display_name!r} is registered already")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The method registered as ``name``.

    Raises
    ------
    ValueError
        No method has that name; the message lists the registered ones.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def available_methods() -> tuple[Method, ...]:
    """Every registered method, in the order registered (the published three first)."""
    return tuple(_REGISTRY.values())


def _lposs_plus(vlm, vm, config):
    from .pipeline import LPOSS

    return LPOSS(vlm, vm, replace(config, pixel_refine=True))


def _lposs(vlm, vm, config):
    from .pipeline import LPOSS

    return LPOSS(vlm, vm, replace(config, pixel_refine=False))


def _maskclip(vlm, vm, config):
    from .pipeline import MaskCLIP

    return MaskCLIP(vlm, replace(config, pixel_refine=False))


register_method(Method("lposs+", "LPOSS+", "patch + pixel propagation", _lposs_plus))
register_method(Method("lposs", "LPOSS", "patch propagation only, no pixel stage", _lposs))
register_method(Method("maskclip", "MaskCLIP", "no propagation, the baseline", _maskclip, uses_vm=False))
