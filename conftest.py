"""What pytest needs for the packages' doctests (``--doctest-modules`` over graphprop, encoders and
segmentation; the test suite's own fixtures are in ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from graphprop._optional import importable

# module -> the optional dependency its doctest needs (the pip extra that installs it)
_DOCTEST_NEEDS = {"segmentation/coco.py": ("pycocotools", "coco")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip a module's doctest whose optional dependency is missing, as its tests skip."""
    for path, (module, extra) in _DOCTEST_NEEDS.items():
        if importable(module):
            continue
        skip = pytest.mark.skip(reason=f'{module} is missing: pip install -e ".[{extra}]"')
        for item in items:
            if isinstance(item, pytest.DoctestItem) and item.nodeid.startswith(path):
                item.add_marker(skip)
