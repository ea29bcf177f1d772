"""Whether an optional dependency imports: one probe for numba (the compiled kernels) and pykeops."""

from __future__ import annotations

import functools
import importlib


@functools.cache
def importable(module: str) -> bool:
    """Whether ``import <module>`` succeeds here (any failure counts as no: a broken install too);
    probed once per module and process."""
    try:
        importlib.import_module(module)
    except Exception:  # pragma: no cover - depends on the installation
        return False
    return True
