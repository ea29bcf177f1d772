"""Class lists from text: ``"road,car,sky;cloud"`` or a file with one class per line."""

from __future__ import annotations

from pathlib import Path
from typing import overload

__all__ = ["read_class_list"]


@overload
def read_class_list(classes: str, classes_file: None) -> list[str]: ...
@overload
def read_class_list(classes: str | None, classes_file: str | None) -> list[str] | None: ...
def read_class_list(classes: str | None, classes_file: str | None) -> list[str] | None:
    """The validated class list from a string or a file.

    Parameters
    ----------
    classes : str or None
        Class names, ``,`` between classes, ``;`` between the synonyms of one class
        (``--classes``).
    classes_file : str or None
        A file with one class per line (``;`` between synonyms; blank lines skipped)
        (``--classes-file``).

    Returns
    -------
    list of str or None
        The classes, checked by :func:`encoders.split_class_names`; None when neither is given.

    Raises
    ------
    ValueError
        Both given, the file missing, or a bad class list (one line).
    """
    import encoders

    if classes and classes_file:
        raise ValueError("give either --classes or --classes-file, not both")
    if classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise ValueError(f"classes file not found: {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif classes is not None:
        names = classes.split(",")
    else:
        return None
    return list(encoders.split_class_names(names)[0])
