"""The example shipped with the project: an image and class names that fit it.

``lposs segment`` with no IMAGE and the demo's example button use them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_CLASSES", "EXAMPLE_IMAGE"]

#: scikit-learn's ``china.jpg`` (CC BY 2.0), shipped in ``segmentation/data``.
EXAMPLE_IMAGE = Path(__file__).resolve().parent / "data" / "example.jpg"
#: Class names for :data:`EXAMPLE_IMAGE` (``,`` between classes, ``;`` between synonyms).
DEFAULT_CLASSES = "building;temple;roof,tree,sky,ground;road;pavement"
