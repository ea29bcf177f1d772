"""Images in, working-size tensors and sliding windows out (``docs/method.md`` §1)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
import torch.nn.functional as F

from graphprop._validation import check_choice

if TYPE_CHECKING:  # pragma: no cover - PIL is imported where images are read
    import PIL.Image

ImageInput = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, torch.Tensor]


@contextlib.contextmanager
def open_image(path: str | os.PathLike, what: str = "image") -> Iterator[PIL.Image.Image]:
    """The image file at ``path``, opened and decoded, for the ``with`` block; one error wording for every file read.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    what : str
        What the file is, for the messages (``image``, ``label``).

    Raises
    ------
    FileNotFoundError
        ``<what> file not found: <path>``.
    ValueError
        ``cannot read <what> <path>: <why>``, for a file PIL cannot decode and for a ValueError the
        block raises about it.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            yield opened
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from None


def load_image(image: ImageInput) -> torch.Tensor:
    """Read any supported image into a tensor.

    Parameters
    ----------
    image : path, PIL image, numpy array or torch.Tensor
        A file path (EXIF orientation applied), a PIL image (greyscale, palette, RGBA and 16-bit
        converted to RGB), an (H, W, 3) / (H, W) / (H, W, 4) numpy array (uint8, uint16, or float
        in [0, 1]) or a (3, H, W) uint8 or float tensor in [0, 1].

    Returns
    -------
    torch.Tensor
        (3, H, W): uint8 for 8-bit sources, float in [0, 1] for float inputs and 16-bit images.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        A missing or unreadable file (see :func:`open_image`), a bad shape or value range, an
        unsupported type.
    """
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        with open_image(image) as opened:
            return load_image(ImageOps.exif_transpose(opened))
    if isinstance(image, Image.Image):
        if image.mode.startswith("I"):  # 16-bit greyscale: keep the precision, as float
            array = np.asarray(image).astype(np.float32) / 65535.0
            return torch.from_numpy(array).clamp(0, 1).expand(3, *array.shape).clone()
        return load_image(np.asarray(image.convert("RGB")))
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = array[:, :, None].repeat(3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(f"image array must be (H, W, 3), (H, W, 4) or (H, W), got shape {image.shape}")
        array = array[:, :, :3]
        tensor = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).contiguous()
        if array.dtype == np.uint8:
            return tensor
        if array.dtype == np.uint16:
            return tensor.float() / 65535.0
        if np.issubdtype(array.dtype, np.floating):
            return _check_float(tensor.float())
        raise TypeError(f"image array must be uint8, uint16 or float in [0, 1], got dtype {array.dtype}")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must have shape (3, H, W), got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image
        if not image.is_floating_point():
            raise TypeError(f"image tensor must be float in [0, 1] or uint8, got {image.dtype}")
        return _check_float(image)
    raise TypeError(f"unsupported image type {type(image).__name__}: give a path, PIL image, numpy array or tensor")


def _check_float(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.numel() and not (tensor.min() >= 0 and tensor.max() <= 1):
        raise ValueError("a float image must hold RGB values in [0, 1]")
    return tensor


def working_size(height: int, width: int, short_side: int = 448, long_side_cap: int = 2048) -> tuple[int, int]:
    """The size LPOSS works at.

    Parameters
    ----------
    height, width : int
        The image's size.
    short_side, long_side_cap : int
        The short side's target and the long side's cap.

    Returns
    -------
    (int, int)
        ``(int(H * s + 0.5), int(W * s + 0.5))`` with ``s = min(long_side_cap / long, short_side / short)``.
    """
    scale = min(long_side_cap / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


RESIZE_METHODS = ("torch", "opencv")


def resize_image(image: torch.Tensor, size: tuple[int, int], method: str = "torch") -> torch.Tensor:
    """Resize an image to ``size`` as the published pipeline does.

    8-bit images are resized bilinearly (half-pixel centres, no antialiasing: OpenCV's
    ``INTER_LINEAR`` rule), rounded back to 8 bits, then divided by 255, as the published
    pipeline. ``method="torch"`` (the default) computes the rule in float and rounds;
    ``method="opencv"`` calls OpenCV's ``cv2.resize`` itself (optional dependency
    ``opencv-python-headless``), whose fixed-point arithmetic differs by one level on some values:
    bit-exact parity with the published pipeline. Float images are resized in float without
    rounding (either method), and returned as given when already at ``size``.

    Parameters
    ----------
    image : torch.Tensor
        (3, H, W) uint8, or float in [0, 1].
    size : (int, int)
        (h, w).
    method : str
        ``torch`` or ``opencv``.

    Returns
    -------
    torch.Tensor
        (3, h, w) float in [0, 1], on ``image``'s device.

    Raises
    ------
    TypeError
        A ``method`` that is not a string.
    ValueError
        An unknown ``method``.
    ImportError
        ``method="opencv"`` without OpenCV.
    """
    check_choice("resize method", method, RESIZE_METHODS)
    if image.dtype == torch.uint8:
        if tuple(image.shape[-2:]) == tuple(size):
            return image.float() / 255
        if method == "opencv":
            cv2 = _import_cv2()
            array = image.permute(1, 2, 0).contiguous().cpu().numpy()
            resized = cv2.resize(array, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            return torch.from_numpy(resized).permute(2, 0, 1).to(image.device).float() / 255
        resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                                antialias=False)[0]
        return resized.round().clamp(0, 255) / 255
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    return resized.clamp(0, 1)


def _import_cv2():
    """OpenCV, or a one-line ImportError naming what installs it."""
    from encoders._optional import require

    return require("cv2", feature='resize="opencv"', extra="opencv", package="opencv-python-headless")


def window_boxes(height: int, width: int, window: int = 224, stride: int = 112) -> list[tuple[int, int, int, int]]:
    """Sliding windows as published, row by row.

    Parameters
    ----------
    height, width : int
        The image's size.
    window, stride : int
        The window's side and the step between windows, in pixels.

    Returns
    -------
    list of (y1, y2, x1, x2)
        ``max(H - window + stride - 1, 0) // stride + 1`` rows (same for columns); window i starts
        at ``i * stride`` and is shifted back to end inside the image; smaller than ``window`` only
        where the image is.
    """
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2 = min(r * stride + window, height)
            x2 = min(c * stride + window, width)
            boxes.append((max(y2 - window, 0), y2, max(x2 - window, 0), x2))
    return boxes
