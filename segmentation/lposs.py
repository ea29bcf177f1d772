"""Deprecated: the propagation stages moved to :mod:`segmentation.stages`.

``from segmentation.lposs import patch_propagation`` keeps working and warns once, on import,
with a :class:`DeprecationWarning`; import from :mod:`segmentation.stages` instead.
"""

from __future__ import annotations

import warnings

from .stages import merge_windows, patch_graph, patch_propagation, pixel_propagation

__all__ = ["merge_windows", "patch_graph", "patch_propagation", "pixel_propagation"]

warnings.warn("segmentation.lposs is deprecated: import from segmentation.stages instead",
              DeprecationWarning, stacklevel=2)
