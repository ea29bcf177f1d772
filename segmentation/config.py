"""The settings of LPOSS / LPOSS+ and their rules, checked in one place.

Each setting has one rule in a table (as scikit-learn's ``_parameter_constraints``): a
:class:`Integer`, an :class:`Interval`, a :class:`Boolean` or a :class:`Choice`.
:func:`check_settings` applies a table; every error is one line naming the setting, a
:class:`TypeError` for a value of the wrong type (a float or a bool for an integer, a string for a
number) and a :class:`ValueError` for a value of the right type out of its range or choices.

The published values are those of ``docs/method.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Protocol

from graphprop._validation import check_bool, check_choice, check_int, check_range

from .preprocess import RESIZE_METHODS

__all__ = [
    "LPOSS_CONSTRAINTS", "PATCH_GRAPH_CONSTRAINTS", "PROPAGATION_CONSTRAINTS", "Boolean", "Choice", "Integer",
    "Interval", "LPOSSConfig", "PropagationSettings", "check_settings",
]


class Constraint(Protocol):
    """A rule for one setting: ``check(name, value)`` raises TypeError / ValueError naming ``name``."""

    def check(self, name: str, value: object) -> None: ...


@dataclass(frozen=True)
class Integer:
    """A Python ``int`` (not a bool) of at least ``minimum``; odd if ``odd``."""

    minimum: int = 1
    odd: bool = False

    def check(self, name: str, value: object) -> None:
        check_int(name, value, minimum=self.minimum, odd=self.odd)  # graphprop's one integer check


@dataclass(frozen=True)
class Interval:
    """A real number (not a bool) in an interval; ``None`` bounds are unbounded (``check_range``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, name: str, value: object) -> None:
        check_range(name, value, low=self.low, high=self.high, low_open=self.low_open, high_open=self.high_open)


@dataclass(frozen=True)
class Boolean:
    """``True`` or ``False`` (not 0 / 1)."""

    def check(self, name: str, value: object) -> None:
        check_bool(name, value)


@dataclass(frozen=True)
class Choice:
    """One of ``options``: not a string is a TypeError, another string a ValueError (``check_choice``)."""

    options: tuple[str, ...]

    def check(self, name: str, value: object) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, one of {list(self.options)}, got {type(value).__name__}")
        check_choice(name, value, self.options)


def check_settings(values: Mapping[str, object], constraints: Mapping[str, Constraint], owner: str = "") -> None:
    """Check each setting in ``values`` against its rule in ``constraints``.

    Parameters
    ----------
    values : mapping of setting name to value; every name must have a rule
    constraints : mapping of setting name to a :class:`Constraint`
    owner : prefix of the names in the messages (``"LPOSSConfig"`` gives ``LPOSSConfig.k``)

    Raises
    ------
    TypeError
        A value of the wrong type.
    ValueError
        A value out of its range or choices.
    """
    for name, value in values.items():
        constraints[name].check(f"{owner}.{name}" if owner else name, value)


# The rules. Shared by LPOSSConfig and the stage functions of segmentation.stages, which take the
# same settings as keyword arguments (pixel_propagation's ``window`` is LPOSSConfig's ``pixel_window``).
PROPAGATION_CONSTRAINTS: dict[str, Constraint] = {
    "alpha": Interval(0.0, 1.0, low_open=True, high_open=True),
    "tol": Interval(0.0),
    "max_iter": Integer(),
}
PATCH_GRAPH_CONSTRAINTS: dict[str, Constraint] = {
    "k": Integer(),
    "gamma": Interval(0.0, low_open=True),
    "sigma": Interval(0.0),
    "pix_dist_pow": Interval(0.0, low_open=True),
}
PIXEL_GRAPH_CONSTRAINTS: dict[str, Constraint] = {
    "tau": Interval(0.0, low_open=True),
    "pixel_window": Integer(minimum=3, odd=True),
}
LPOSS_CONSTRAINTS: dict[str, Constraint] = {
    "short_side": Integer(),
    "long_side_cap": Integer(),
    "window": Integer(),
    "stride": Integer(),
    "sliding": Boolean(),
    **PATCH_GRAPH_CONSTRAINTS,
    **PIXEL_GRAPH_CONSTRAINTS,
    **PROPAGATION_CONSTRAINTS,
    "pixel_refine": Boolean(),
    "resize": Choice(tuple(RESIZE_METHODS)),
}


@dataclass(frozen=True)
class PropagationSettings:
    """The label-propagation settings both stages share (``docs/method.md`` §6, §7).

    Each stage solves ``(I - alpha W_hat) Z = Y`` by conjugate gradient, every column at once with
    per-column stopping, as published. Checked on construction (:data:`PROPAGATION_CONSTRAINTS`);
    the messages name the setting as the stages' keyword arguments do (``alpha must be ...``).

    Attributes
    ----------
    alpha : float in (0, 1), how far labels spread (published 0.95)
    tol : float >= 0, per-column relative residual at which a column stops (published 1e-6)
    max_iter : int >= 1, CG iterations at most (published 10)
    """

    alpha: float = 0.95
    tol: float = 1e-6
    max_iter: int = 10

    def __post_init__(self) -> None:
        check_settings(self.as_dict(), PROPAGATION_CONSTRAINTS)

    def as_dict(self) -> dict:
        """``{"alpha": ..., "tol": ..., "max_iter": ...}``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class LPOSSConfig:
    """Every setting of LPOSS / LPOSS+, with the published defaults (``docs/method.md``).

    Checked on construction against :data:`LPOSS_CONSTRAINTS` (and ``long_side_cap >=
    short_side``): a TypeError for a value of the wrong type, a ValueError for one out of range,
    one line naming the field (``LPOSSConfig.alpha must be in (0, 1), got 1.5``).

    Attributes
    ----------
    short_side, long_side_cap : int
        The image is resized so its short side is ``short_side`` unless the long side would exceed
        ``long_side_cap`` (448, 2048).
    window, stride : int
        Sliding windows in pixels (224, 112).
    sliding : bool
        ``False`` runs the whole image as one window (an option beyond the paper).
    k, gamma, sigma, pix_dist_pow : int, float, float, float
        Patch graph (400 neighbours, 3.0, 0.01, 1.0).
    alpha, tol, max_iter : float, float, int
        Label propagation (0.95, 1e-6, 10 CG iterations), both stages (:attr:`propagation`).
    tau, pixel_window : float, int
        Pixel graph (0.01, a 13 x 13 window).
    pixel_refine : bool
        LPOSS+ (True) or LPOSS (False).
    resize : str
        How 8-bit images are resized (§1): "torch" (default; the published rule in float, rounded)
        or "opencv" (OpenCV's own fixed-point ``INTER_LINEAR``, bit-exact with the published
        pipeline; needs ``opencv-python-headless``).
    """

    short_side: int = 448
    long_side_cap: int = 2048
    window: int = 224
    stride: int = 112
    sliding: bool = True
    k: int = 400
    gamma: float = 3.0
    sigma: float = 0.01
    pix_dist_pow: float = 1.0
    alpha: float = 0.95
    tau: float = 0.01
    pixel_window: int = 13
    tol: float = 1e-6
    max_iter: int = 10
    pixel_refine: bool = True
    resize: str = "torch"

    def __post_init__(self) -> None:
        values = self.as_dict()
        check_settings({name: values[name] for name in values if name not in PROPAGATION_CONSTRAINTS},
                       LPOSS_CONSTRAINTS, "LPOSSConfig")
        if self.long_side_cap < self.short_side:
            raise ValueError(f"LPOSSConfig.long_side_cap ({self.long_side_cap}) must be >= "
                             f"short_side ({self.short_side})")
        try:  # alpha, tol and max_iter: checked once, by the settings both stages take
            propagation = PropagationSettings(self.alpha, self.tol, self.max_iter)
        except (TypeError, ValueError) as error:
            raise type(error)(f"LPOSSConfig.{error}") from None
        object.__setattr__(self, "_propagation", propagation)  # not a field: as_dict, ==, repr ignore it

    @property
    def propagation(self) -> PropagationSettings:
        """alpha, tol and max_iter as the :class:`PropagationSettings` both stages take."""
        return self._propagation  # type: ignore[attr-defined]

    def as_dict(self) -> dict:
        """Every field by name (``LPOSSConfig(**config.as_dict()) == config``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


