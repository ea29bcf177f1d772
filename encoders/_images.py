"""Input checks and preprocessing shared by the image encoders."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from graphprop._validation import check_positive_int


def check_images(images: object, name: str = "images") -> torch.Tensor:
    """Validate a batch of images: a (B, 3, H, W) floating tensor with values in [0, 1].

    Parameters
    ----------
    images : object
        What was passed.
    name : str
        The argument's name, for the messages.

    Returns
    -------
    (B, 3, H, W) float tensor
        ``images`` itself.

    Raises
    ------
    TypeError
        For something other than a floating tensor.
    ValueError
        For a wrong shape, an empty batch or image, or values outside [0, 1] (NaN included).
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W) (RGB), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got dtype {images.dtype}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(images.shape)}")
    low, high = torch.aminmax(images)
    if not (low >= -1e-6 and high <= 1 + 1e-6):  # also rejects NaN
        raise ValueError(
            f"{name} must hold RGB values in [0, 1] (the encoder applies its own mean/std), "
            f"got values in [{low.item():.4g}, {high.item():.4g}]"
        )
    return images


def pad_and_normalize(
    images: torch.Tensor,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype,
) -> torch.Tensor:
    """Pad images with black to a multiple of ``patch_size``, then normalise.

    As the published pipeline: black (0 in [0, 1]) is added at the bottom/right **before** the
    per-channel ``(x - mean) / std``, so padded pixels become ``-mean / std``.

    Parameters
    ----------
    images : (B, 3, H, W) float tensor, RGB in [0, 1]
    patch_size : int
    mean, std : sequences of 3 floats
    dtype : torch.dtype
        The dtype of the result (the encoder's precision).

    Returns
    -------
    (B, 3, ceil(H / p) * p, ceil(W / p) * p) tensor of ``dtype`` on the images' device.
    """
    height, width = images.shape[-2:]
    pad_h = -height % patch_size
    pad_w = -width % patch_size
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), value=0.0)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return ((images - mean_t) / std_t).to(dtype)


def dense_in_chunks(
    images: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Check images, then run ``forward`` on padded, normalised chunks of ``batch_size``.

    Parameters
    ----------
    images : (B, 3, H, W) float tensor, RGB in [0, 1]
    forward : callable
        (b, 3, H', W') normalised batch on ``device`` in ``dtype`` (H', W' multiples of the
        patch) -> (b, h, w, D).
    batch_size, patch_size : int
    mean, std : sequences of 3 floats
    device : torch.device
    dtype : torch.dtype

    Returns
    -------
    (B, h, w, D) float32 tensor on the images' device.
    """
    images = check_images(images)
    out = []
    for part in chunks(images.shape[0], batch_size):
        x = pad_and_normalize(images[part].to(device), patch_size, mean, std, dtype)
        out.append(forward(x).float().to(images.device))
    return torch.cat(out)


def chunks(batch: int, size: int) -> Iterator[slice]:
    """Slices of ``range(batch)`` of at most ``size`` items.

    Parameters
    ----------
    batch, size : int

    Yields
    ------
    slice
        ``slice(0, size)``, ``slice(size, 2 * size)``, ..., the last one cut at ``batch``.
    """
    for start in range(0, batch, size):
        yield slice(start, min(start + size, batch))


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device an encoder runs on.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` means CUDA when available, else CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For a CUDA device where CUDA is not available.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available here; use device='cpu'")
    return device


def check_batch_size(batch_size: int, name: str = "batch_size") -> int:
    """``batch_size`` if it is a positive integer (not a bool).

    Parameters
    ----------
    batch_size : int
    name : str
        The argument's name, for the message.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        Not an integer (a float, a bool), naming the argument.
    ValueError
        Below 1, naming the argument.
    """
    return check_positive_int(name, batch_size)
