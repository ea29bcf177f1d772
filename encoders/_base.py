"""What the built-in encoders share: device, precision, batch size and weights source, the patch
size and mean/std, ``dense_features`` over padded, normalised chunks, and ``__repr__``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._images import check_batch_size, dense_in_chunks, resolve_device
from ._precision import resolve_precision
from ._weights import weights_source

__all__ = ["DenseEncoderBase"]


class DenseEncoderBase:
    """Base of :class:`OpenCLIPEncoder` and :class:`TimmViTEncoder` (the protocols need none).

    A subclass calls :meth:`_setup` first in its ``__init__``, builds its model, calls
    :meth:`_set_geometry`, and implements :meth:`_dense_forward`.

    Attributes
    ----------
    name : str
        The model name as given.
    device : torch.device
    precision : {"fp32", "bf16", "fp16"}
    dtype : torch.dtype
        The precision's dtype.
    batch_size : int
        Images per forward pass.
    source : WeightsSource
        Where the weights come from (hub tag, local file or random).
    patch_size : int
    mean, std : tuple of 3 floats
        The normalisation applied to images in [0, 1].
    """

    name: str
    device: torch.device
    precision: str
    dtype: torch.dtype
    batch_size: int
    patch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _setup(self, model: str, pretrained: object, *, device: torch.device | str | None, precision: str,
               half: bool, batch_size: int) -> None:
        """Check and store the settings every encoder takes (errors name the argument)."""
        self.name = model
        self.device = resolve_device(device)
        self.precision, self.dtype = resolve_precision(precision, half, self.device)
        self.batch_size = check_batch_size(batch_size)
        self.source = weights_source(pretrained)

    def _set_geometry(self, library: str, patch: Sequence[int], mean: Sequence[float],
                      std: Sequence[float]) -> None:
        """Store the (square) patch size and the normalisation constants.

        Raises
        ------
        ValueError
            For non-square patches, naming the ``library`` and the model.
        """
        if patch[0] != patch[1]:
            raise ValueError(f"{library} model {self.name!r} has non-square patches {tuple(patch)}; "
                             "only square patches are supported")
        self.patch_size = int(patch[0])
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def _repr_options(self) -> dict[str, object]:
        """Settings shown in ``repr`` between the weights and the device (none by default)."""
        return {}

    def __repr__(self) -> str:
        fields = {"model": self.name, "weights": self.source.describe(), **self._repr_options(),
                  "device": str(self.device), "precision": self.precision}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    @torch.inference_mode()
    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features of a batch of images (see the class docstring for which features).

        Parameters
        ----------
        images : (B, 3, H, W) float tensor, RGB in [0, 1]

        Returns
        -------
        (B, ceil(H / p), ceil(W / p), D) float32 tensor on the images' device, L2-normalised, ``p``
        the patch size. Images are padded with black to a multiple of ``p`` before the mean/std
        normalisation and run in chunks of ``batch_size``.

        Raises
        ------
        TypeError, ValueError
            For images that are not a (B, 3, H, W) float tensor with values in [0, 1].
        """
        return dense_in_chunks(images, self._dense_forward, batch_size=self.batch_size,
                               patch_size=self.patch_size, mean=self.mean, std=self.std, device=self.device,
                               dtype=self.dtype)

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) normalised on the device, H and W multiples of the patch -> (b, h, w, D)."""
        raise NotImplementedError
