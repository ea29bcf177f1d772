"""LPOSS / LPOSS+: training-free open-vocabulary semantic segmentation.

``LPOSS(vlm, vm).segment(image, ["road", "car", "sky;cloud"])`` labels every pixel;
:mod:`segmentation.stages` holds the stages as plain tensor functions, :mod:`segmentation.config`
the settings and their rules.
"""

from .pipeline import LPOSS, ImageFeatures, LPOSSConfig, MaskCLIP

__all__ = ["ImageFeatures", "LPOSS", "LPOSSConfig", "MaskCLIP"]
