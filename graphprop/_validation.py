"""Input checks shared by the public functions: one helper per kind of input.

Every public entry point validates its arguments once, with these helpers, and the
errors name the argument and what was expected (one line). Internal code trusts its
inputs.

The error types are fixed, as in the standard library and scikit-learn:

- :class:`TypeError`: the argument has the wrong *type* -- not a number, a ``bool``
  where an integer is expected, not a :class:`torch.Tensor`, a tensor of the wrong
  dtype (an integer tensor where a floating one is expected), a choice that is not
  of the choices' type (an ``int`` where a name is expected);
- :class:`ValueError`: the type is right but the *value* is not -- out of range,
  NaN or infinite, the wrong number of dimensions or shape, empty, an unknown name,
  tensors on different devices.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# floating dtypes the compiled kernels cannot read (numba has no 16-bit floats)
HALF_FLOATS = (torch.float16, torch.bfloat16)


def widened(t: Tensor) -> Tensor:
    """``t`` with float16 / bfloat16 upcast to float32 (exactly); any other tensor as it is."""
    return t.float() if t.dtype in HALF_FLOATS else t


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

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        The value given.
    ndim : int, optional
        The expected number of dimensions.
    dims : sequence of str, optional
        Names of the expected dimensions (e.g. ``("N", "D")``) for the message;
        implies ``ndim``.
    floating : bool
        Require a floating dtype (float16, bfloat16, float32, float64).
    finite : bool
        Refuse NaN and infinite entries.
    nonempty : bool
        Refuse a tensor with no entries.

    Returns
    -------
    Tensor
        The value.

    Raises
    ------
    TypeError
        If ``value`` is not a tensor, or (``floating``) its dtype is not floating.
    ValueError
        If it has the wrong number of dimensions, is empty or is not finite.
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
    """Check that ``value`` is one of ``choices``; return it.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        The value given.
    choices : sequence
        The accepted values (usually names).

    Returns
    -------
    The value.

    Raises
    ------
    TypeError
        If ``value`` is of none of the choices' types (e.g. an ``int`` for a name).
    ValueError
        If it is of the right type but not one of the choices.
    """
    if value in choices:
        return value  # type: ignore[return-value]
    kinds = tuple({type(c) for c in choices})
    if kinds and not isinstance(value, kinds):
        expected = " or ".join(sorted(k.__name__ for k in kinds))
        raise TypeError(f"{name} must be a {expected}, one of {list(choices)}, got {type(value).__name__}")
    raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_int(name: str, value: object, *, minimum: int, odd: bool = False) -> int:
    """Check that ``value`` is an integer ``>= minimum`` (and odd where ``odd=True``); return
    it as an ``int``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        A Python or numpy integer (``bool`` is refused).
    minimum : int
        The smallest accepted value (0 for a count that may be zero).
    odd : bool
        Only odd values (a window's side).

    Returns
    -------
    int
        The value.

    Raises
    ------
    TypeError
        If ``value`` is not an integer (a float, a ``bool``, a string ...).
    ValueError
        If it is below ``minimum``, or even where ``odd=True``.
    """
    if odd:
        wanted = f"an odd integer >= {minimum}"
    else:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {wanted}, got {type(value).__name__} {value!r}")
    if value < minimum or (odd and value % 2 == 0):
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def check_bool(name: str, value: object, *, none: bool = False) -> bool | None:
    """Check that ``value`` is ``True`` or ``False`` (not 0 / 1, not a string; ``None`` too
    where ``none=True``); return it.

    Raises
    ------
    TypeError
        If it is anything else.
    """
    if isinstance(value, (bool, np.bool_)) or (none and value is None):
        return None if value is None else bool(value)
    wanted = "True, False or None" if none else "True or False"
    raise TypeError(f"{name} must be {wanted}, got {type(value).__name__} {value!r}")


def check_positive_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Check that ``value`` is an integer ``>= 1``: :func:`check_int` with ``minimum=1``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        A Python or numpy integer (``bool`` is refused).
    minimum : int, optional
        Deprecated: a minimum other than 1 is :func:`check_int`'s job (the name said
        "positive" where ``minimum=0`` accepted 0). Still honoured, with a
        :class:`DeprecationWarning`.

    Returns
    -------
    int
        The value.

    Raises
    ------
    TypeError
        If ``value`` is not an integer.
    ValueError
        If it is below 1 (or ``minimum``).
    """
    if minimum is None:
        minimum = 1
    else:
        warnings.warn("check_positive_int(minimum=...) is deprecated; use check_int(name, value, minimum=...)",
                      DeprecationWarning, stacklevel=2)
    return check_int(name, value, minimum=minimum)


def check_range(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Check that ``value`` is a real number in an (open or closed) interval.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        A Python or numpy real number, or a 0-d tensor (``bool`` is refused).
    low, high : float, optional
        The bounds (none: unbounded on that side).
    low_open, high_open : bool
        Whether the bound itself is excluded.

    Returns
    -------
    float
        The value.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If it is NaN or outside the interval.
    """
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
    """Check that all the named tensors live on one device; return it.

    Parameters
    ----------
    **tensors : Tensor
        The tensors, by argument name (for the message).

    Returns
    -------
    torch.device
        Their device.

    Raises
    ------
    ValueError
        If the devices differ.
    """
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on the same device, got {listing}")
    return first


def finite_nonnegative(values: Tensor) -> tuple[bool, bool]:
    """``(all finite, all >= 0)`` of ``values`` in one pass.

    Parameters
    ----------
    values : Tensor
        Any shape, floating.

    Returns
    -------
    tuple of bool
        ``(all entries finite, all entries >= 0)``; ``(True, True)`` when empty.
        Without an (N,) temporary: NaN and inf propagate into ``aminmax``.
    """
    if values.numel() == 0:
        return True, True
    lo, hi = torch.aminmax(values)
    return bool(torch.isfinite(lo) & torch.isfinite(hi)), bool(lo >= 0)
