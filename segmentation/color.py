"""Colour conversion as a pure function (the LPOSS+ pixel graph works on CIE Lab, ``docs/method.md`` §7)."""

from __future__ import annotations

import torch
from torch import Tensor

# sRGB (D65) -> CIE XYZ, and the D65 white point (IEC 61966-2-1 / CIE 15).
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)
# (100, 128, 128): the scale LPOSS+ divides the L, a, b channels by (docs/method.md §7).
LAB_SCALE = (100.0, 128.0, 128.0)


def rgb_to_lab(image: Tensor) -> Tensor:
    """CIE Lab (D65) of an sRGB image.

    The sRGB gamma is removed first (``((c + 0.055) / 1.055) ** 2.4`` above 0.04045, ``c / 12.92``
    below); the formulas are those of ``kornia.color.rgb_to_lab`` (linear segment
    ``7.787 t + 4/29`` below 0.008856).

    Parameters
    ----------
    image : (3, H, W) or (B, 3, H, W) float tensor, sRGB in [0, 1]

    Returns
    -------
    Tensor of the same shape, dtype and device: L in [0, 100], a and b roughly in [-128, 127].

    Raises
    ------
    ValueError
        ``image`` is not (3, H, W) or (B, 3, H, W).
    TypeError
        ``image`` is not a float tensor.
    """
    if image.dim() not in (3, 4) or image.size(-3) != 3:
        raise ValueError(f"image must have shape (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a float tensor in [0, 1], got {image.dtype}")
    linear = torch.where(image > 0.04045, ((image + 0.055) / 1.055).pow(2.4), image / 12.92)
    m = torch.tensor(_RGB_TO_XYZ, dtype=image.dtype, device=image.device)
    xyz = torch.einsum("ij,...jhw->...ihw", m, linear)
    white = torch.tensor(_WHITE_D65, dtype=image.dtype, device=image.device).view(3, 1, 1)
    t = xyz / white
    eps = 0.008856
    f = torch.where(t > eps, t.clamp_min(eps).pow(1 / 3), 7.787 * t + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)
