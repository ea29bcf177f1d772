"""Pictures of a segmentation: a palette label PNG and an overlay with a legend."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch


def class_colours(count: int) -> np.ndarray:
    """Colours for ``count`` classes, well apart in hue, the same for a class index every time.

    Parameters
    ----------
    count : int
        How many classes.

    Returns
    -------
    numpy.ndarray
        (count, 3) uint8 RGB colours; row ``i`` is class ``i``'s.
    """
    colours = []
    for i in range(count):
        hue = (i * 0.618033988749895) % 1.0  # golden-ratio steps: neighbours differ
        value = 0.95 if i % 2 == 0 else 0.75
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, value)])
    return np.array(colours, dtype=np.uint8)


def rgb_array(image: torch.Tensor) -> np.ndarray:
    """An image as the uint8 array the pictures are drawn on.

    Parameters
    ----------
    image : torch.Tensor
        (3, H, W) uint8, or float in [0, 1] (scaled by 255, rounded and clamped to [0, 255]).

    Returns
    -------
    numpy.ndarray
        (H, W, 3) uint8, on the CPU.
    """
    rgb = image if image.dtype == torch.uint8 else (image * 255).round().clamp(0, 255).to(torch.uint8)
    return rgb.permute(1, 2, 0).cpu().numpy()


def label_image(labels: torch.Tensor, num_classes: int):
    """A palette ("P" mode) PIL image whose pixel values are the class indices.

    Parameters
    ----------
    labels : torch.Tensor
        (H, W) class indices in ``[0, num_classes)``.
    num_classes : int
        At most 256; the palette gives class ``i`` the colour ``class_colours(num_classes)[i]``.

    Returns
    -------
    PIL.Image.Image

    Raises
    ------
    ValueError
        More than 256 classes.
    """
    from PIL import Image

    if num_classes > 256:
        raise ValueError(f"a palette PNG holds at most 256 classes, got {num_classes}")
    image = Image.fromarray(labels.to(torch.uint8).cpu().numpy(), mode="P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:num_classes] = class_colours(num_classes)
    image.putpalette(palette.reshape(-1).tolist())
    return image


def overlay_image(image: np.ndarray, labels: torch.Tensor, class_names: list[str], opacity: float = 0.5):
    """The image blended with class colours, with a legend (colour, name, share) of the classes present.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W, 3) uint8.
    labels : torch.Tensor
        (H, W) class indices.
    class_names : list of str
        The classes (``;`` between synonyms; the legend shows the first).
    opacity : float
        The colours' weight in the blend.

    Returns
    -------
    PIL.Image.Image
        RGB, the blended image with the legend to its right (wider than ``image``).
    """
    from PIL import Image, ImageDraw

    labels_np = labels.cpu().numpy()
    colours = class_colours(len(class_names))
    blended = (image.astype(np.float32) * (1 - opacity) + colours[labels_np].astype(np.float32) * opacity)
    picture = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
    counts = np.bincount(labels_np.reshape(-1), minlength=len(class_names))
    present = [i for i in np.argsort(-counts) if counts[i] > 0]
    texts = [_legend_text(class_names[i], counts[i], labels_np.size) for i in present]
    size = max(10, round(picture.width / 60))  # the page shows the overlay ~600 px wide: text stays readable
    font = _legend_font(size)
    line, swatch, gap = round(1.6 * size), size, round(0.6 * size)
    # the rows start below the top-right corner, where the page puts its fullscreen button over the picture
    top = 3 * size
    legend_width = gap + swatch + gap + max(math.ceil(font.getlength(t)) for t in texts) + gap
    height = max(picture.height, top + line * len(present) + gap)
    canvas = Image.new("RGB", (picture.width + legend_width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = picture.width + gap
    for row, (i, text) in enumerate(zip(present, texts, strict=True)):
        y = top + row * line
        draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(int(c) for c in colours[i]), outline=(0, 0, 0))
        left, upper, _, lower = font.getbbox(text)
        draw.text((x + swatch + gap - left, y + (swatch - upper - lower) / 2), text, fill=(0, 0, 0), font=font)
    return canvas


def _legend_font(size: int):
    """Pillow's built-in font at ``size`` px (its fixed 11 px bitmap font where FreeType is missing)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # pragma: no cover - Pillow without FreeType, or before 10.1
        return ImageFont.load_default()


def _legend_text(name: str, count: int, total: int) -> str:
    return f"{name.split(';')[0]} {100 * count / total:.1f}%"


def class_shares(labels: torch.Tensor, class_names: list[str]) -> list[tuple[str, float]]:
    """The share of the pixels of each class present.

    Parameters
    ----------
    labels : torch.Tensor
        (H, W) class indices.
    class_names : list of str
        The classes.

    Returns
    -------
    list of (str, float)
        (class name, percent of the pixels), largest first (ties in class order).
    """
    counts = torch.bincount(labels.reshape(-1).cpu(), minlength=len(class_names))
    total = int(labels.numel())
    order = torch.argsort(counts, descending=True, stable=True)
    return [(class_names[i], 100.0 * int(counts[i]) / total) for i in order.tolist() if counts[i] > 0]
