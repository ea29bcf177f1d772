"""Optional dependencies: one way to import them and one error when they are missing.

The project's extras (``pyproject.toml``: ``opencv``, ``demo``, ``coco``) each unlock a feature;
:func:`require` imports the module behind one and, when it is missing, raises
:class:`MissingDependencyError` whose one-line message names the feature, the pip package and the
extra. It lives in ``encoders``, the lowest layer that ``segmentation`` already imports.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "install_hint", "require"]


class MissingDependencyError(ImportError):
    """An optional dependency is not installed (an ``ImportError``, so ``except ImportError`` holds)."""


def install_hint(package: str, extra: str | None = None) -> str:
    """How to install an optional dependency, as one phrase.

    Parameters
    ----------
    package : str
        The distribution's name on PyPI (``"opencv-python-headless"``).
    extra : str, optional
        The ``lposs`` extra that pulls it in (``"opencv"``).

    Returns
    -------
    str
        ``'pip install opencv-python-headless (or pip install "lposs[opencv]"; in a checkout:
        pip install -e ".[opencv]")'``, or ``"pip install PACKAGE"`` without an extra.
    """
    if not extra:
        return f"pip install {package}"
    return f'pip install {package} (or pip install "lposs[{extra}]"; in a checkout: pip install -e ".[{extra}]")'


def require(module: str, *, feature: str, extra: str | None = None, package: str | None = None) -> ModuleType:
    """Import an optional dependency, or raise one clear error naming what installs it.

    Parameters
    ----------
    module : str
        The module to import, dotted names allowed (``"cv2"``, ``"pycocotools.mask"``).
    feature : str
        What needs it, for the message (``'resize="opencv"'``, ``"the demo"``).
    extra : str, optional
        The ``lposs`` extra that installs it (``"opencv"``, ``"demo"``, ``"coco"``).
    package : str, optional
        The pip distribution, when its name differs from the module's
        (``"opencv-python-headless"`` for ``cv2``). Default: the module's top-level name.

    Returns
    -------
    module
        The imported module.

    Raises
    ------
    MissingDependencyError
        (an ``ImportError``) when the module, or a module it needs, is not installed; one line:
        ``'resize="opencv" needs opencv-python-headless, an optional dependency: pip install
        opencv-python-headless (or pip install "lposs[opencv]"; ...)'``.

    Examples
    --------
    >>> require("json", feature="reading settings").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        name = package or module.partition(".")[0]
        cause = f" ({error})" if getattr(error, "name", None) not in (None, module, module.partition(".")[0]) else ""
        raise MissingDependencyError(
            f"{feature} needs {name}, an optional dependency{cause}: {install_hint(name, extra)}"
        ) from None
