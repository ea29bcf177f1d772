"""Old module paths kept as aliases: a name read from them warns (DeprecationWarning) and gives the new one."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable


def alias_getattr(old_module: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``old_module`` whose ``names`` moved.

    Parameters
    ----------
    old_module : str
        The old module's name (``segmentation.segment_command``).
    names : dict
        Old name -> ``"new.module:new_name"``.

    Returns
    -------
    callable
        ``__getattr__(name)``: the new object, after a DeprecationWarning that names where it lives now.
    """

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, new_name = names[name].partition(":")
        warnings.warn(f"{old_module}.{name} is deprecated; use {module}.{new_name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(module), new_name)

    return __getattr__
