"""Input checks shared by the public functions: one helper per kind of input.

Every public entry point validates its arguments once, with these helpers, and the
errors name the argument and what was expected. Internal code trusts its inputs.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    name: str,
    value: object,
    *,
    ndim: int | None = None,
    dims: Sequence[str] | None = None,
    floating: bool = False,
    finite: bool = False,
    nonempty: bool = False,
) -> Tensor:
    """Check that ``value`` is a tensor of the expected rank and kind; return it.

    ``dims`` names the expected dimensions (e.g. ``("N", "D")``) for the message and
    implies ``ndim``.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dims is not None:
        ndim = len(dims)
    if ndim is not None and value.dim() != ndim:
        shape = f" ({', '.join(dims)})" if dims is not None else ""
        raise ValueError(
            f"{name} must have {ndim} dimensions{shape}, got shape {tuple(value.shape)}"
        )
    if floating and value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if nonempty and value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    if finite and value.numel() and not finite_nonnegative(value)[0]:
        raise ValueError(f"{name} contains NaN or infinite values")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Check that ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_range(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Check that ``value`` is a real number (Python, numpy, or a 0-d tensor) in the
    given (open or closed) interval; returns it as a float."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    ok = v == v  # NaN fails every comparison
    if low is not None:
        ok = ok and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{hb}, got {value!r}")
    return v


def check_same_device(**tensors: Tensor) -> torch.device:
    """Check that all the named tensors live on one device; return it."""
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on the same device, got {listing}")
    return first


def finite_nonnegative(values: Tensor) -> tuple[bool, bool]:
    """``(all finite, all >= 0)`` in one pass without an (N,) temporary: NaN and inf
    propagate into ``aminmax``."""
    if values.numel() == 0:
        return True, True
    lo, hi = torch.aminmax(values)
    return bool(torch.isfinite(lo) & torch.isfinite(hi)), bool(lo >= 0)
