"""Encoders by name: ``create("open_clip:ViT-B-16@laion2b_s34b_b88k")`` and ``register(name)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ._precision import check_precision
from ._protocols import VisionEncoder

Factory = Callable[..., Any]
F = TypeVar("F", bound=Factory)

_FACTORIES: dict[str, Factory] = {}


def register(name: str, factory: Factory | None = None, *, overwrite: bool = False):
    """Make an encoder available to :func:`create` (and the command line) under a prefix.

    Parameters
    ----------
    name : str
        The spec prefix: a non-empty word without ``:``, ``@`` or spaces.
    factory : callable, optional
        Called as ``factory(model, pretrained=weights, **kwargs)`` for the spec
        ``"name:model@weights"``, and as ``factory(model, **kwargs)`` when the spec has no ``@``
        part. Omitted, ``register`` returns a decorator.
    overwrite : bool
        Replace a factory already registered under ``name``.

    Returns
    -------
    callable
        ``factory`` (or, without it, the decorator that registers and returns its argument).

    Raises
    ------
    ValueError
        If ``name`` is taken by another factory (unless ``overwrite=True``) or not a plain word.
    TypeError
        If the factory is not callable, or ``name`` not a string.

    Examples
    --------
    Use it as a decorator or call it directly::

        @encoders.register("mine")
        class MyEncoder:                      # no base class needed: implement the protocol
            patch_size = 16
            def __init__(self, model, pretrained=None, **kwargs): ...
            def dense_features(self, images): ...

        encoders.create("mine:small@/weights/small.pt")
    """
    if not isinstance(name, str):
        raise TypeError(f"encoder name must be a string, got {type(name).__name__}")
    if not name or any(c in name for c in ":@ "):
        raise ValueError(f"encoder name must be a non-empty string without ':', '@' or spaces, got {name!r}")

    def add(factory: F) -> F:
        if not callable(factory):
            raise TypeError(f"encoder factory for {name!r} must be callable, got {factory!r}")
        if name in _FACTORIES and not overwrite and _FACTORIES[name] is not factory:
            raise ValueError(f"an encoder is already registered as {name!r}; pass overwrite=True to replace it")
        _FACTORIES[name] = factory
        return factory

    return add if factory is None else add(factory)


def registered() -> list[str]:
    """The registered encoder prefixes.

    Returns
    -------
    list of str
        Sorted, e.g. ``["open_clip", "timm"]``.
    """
    return sorted(_FACTORIES)


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """Split an encoder spec.

    Parameters
    ----------
    spec : str
        ``"prefix:model@weights"`` or ``"prefix:model"``.

    Returns
    -------
    prefix, model : str
    weights : str or None
        ``None`` when the spec has no ``@`` part.

    Raises
    ------
    TypeError
        For a spec that is not a string.
    ValueError
        For a spec without a prefix, without a model, or with an empty ``@`` part.
    """
    if not isinstance(spec, str):
        raise TypeError("an encoder spec must be a string such as 'open_clip:ViT-B-16@laion2b_s34b_b88k', "
                        f"got {spec!r}")
    prefix, colon, rest = spec.strip().partition(":")
    if not colon or not prefix:
        raise ValueError(
            f"encoder spec {spec!r} has no prefix; write 'PREFIX:MODEL[@WEIGHTS]' with PREFIX one of "
            f"{registered()}, e.g. 'open_clip:ViT-B-16@laion2b_s34b_b88k' or 'timm:vit_base_patch16_224.dino'"
        )
    model, at, weights = rest.partition("@")
    if not model:
        raise ValueError(f"encoder spec {spec!r} names no model after {prefix + ':'!r}")
    if at and not weights:
        raise ValueError(f"encoder spec {spec!r} has an empty weights part after '@'")
    return prefix, model, weights if at else None


def create(spec: str | Any, *, precision: str | None = None, **kwargs: Any) -> Any:
    """Build an encoder from a spec string.

    Parameters
    ----------
    spec : str or encoder
        ``"open_clip:ViT-B-16@laion2b_s34b_b88k"`` (open_clip model and pretrained tag),
        ``"open_clip:ViT-B-16@/path/to/open_clip_model.safetensors"`` (a local checkpoint),
        ``"timm:vit_base_patch16_224.dino"`` (timm model with its tag; ``@/path/file.pth`` for a
        local checkpoint), or a prefix added with :func:`register`. An object that already
        implements :class:`VisionEncoder` is returned as it is.
    precision : {"fp32", "bf16", "fp16"}, optional
        What the network runs in (the built-in encoders' ``precision``). Passed on only when
        given, so encoders without the option keep working; for an encoder object, it must
        match the object's own ``precision`` (fp32 when it has none).
    **kwargs
        Passed to the encoder's constructor (``device=...``, ``pretrained=None`` for random
        weights, which overrides the spec's ``@`` part, ...).

    Returns
    -------
    encoder
        What the registered factory builds (or ``spec`` itself for an encoder object).

    Raises
    ------
    TypeError
        For a spec that is neither a string nor an encoder, or a precision that is not a string.
    ValueError
        For a bad spec, an unknown prefix, an unknown precision, or a precision that an encoder
        object given does not run in.
    """
    if precision is not None:
        check_precision(precision)
    if not isinstance(spec, str) and isinstance(spec, VisionEncoder):
        own = getattr(spec, "precision", "fp32")
        if precision is not None and precision != own:
            raise ValueError(f"precision={precision!r} was asked for, but the encoder given runs in {own!r}; "
                             "build it with that precision instead")
        return spec
    prefix, model, weights = parse_spec(spec)
    if prefix not in _FACTORIES:
        raise ValueError(f"unknown encoder {prefix!r} in spec {spec!r}; registered encoders: {registered()}")
    if weights is not None:
        kwargs.setdefault("pretrained", weights)
    if precision is not None:
        kwargs["precision"] = precision
    return _FACTORIES[prefix](model, **kwargs)
