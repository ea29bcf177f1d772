"""Values derived from a graph's tensors, cached on the graph and never served stale.

A leaf module (imports nothing from the package), used by :class:`~graphprop.Graph`
and :class:`~graphprop.GridGraph`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor

T = TypeVar("T")


def cached_derived(owner: Any, name: str, tensors: tuple[Tensor | None, ...], compute: Callable[[], T]) -> T:
    """``compute()``, cached in ``owner.__dict__`` under ``name``.

    Parameters
    ----------
    owner : object
        The (frozen) graph; the cache lives in its ``__dict__["_derived"]``.
    name : str
        What is cached.
    tensors : tuple of Tensor or None
        The tensors the value is derived from: the cache entry is keyed by their
        storage and in-place version counters, so an edited graph is recomputed.
    compute : callable
        Computes the value.

    Returns
    -------
    The value. Not cached when a tensor is an inference-mode tensor (no version
    counter to see in-place edits by).
    """
    key = _key(tensors)
    if key is None:
        return compute()
    cache = owner.__dict__.setdefault("_derived", {})
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = compute()
    cache[name] = (key, value)
    return value


def store_derived(owner: Any, tensors: tuple[Tensor | None, ...], **values: Any) -> None:
    """Store values a builder knows by construction (``symmetric=True``) in the cache that
    :func:`cached_derived` reads, keyed by ``tensors`` as there; nothing is stored for
    inference-mode tensors."""
    key = _key(tensors)
    if key is None:
        return
    cache = owner.__dict__.setdefault("_derived", {})
    for name, value in values.items():
        cache[name] = (key, value)


def _key(tensors: tuple[Tensor | None, ...]) -> tuple[tuple[int, int], ...] | None:
    """The cache key of ``tensors``: storage and in-place version of each; None for inference
    tensors, which have no version counter to see in-place edits by."""
    present = [t for t in tensors if t is not None]
    if any(t.is_inference() for t in present):
        return None
    return tuple((t.data_ptr(), t._version) for t in present)
