"""The two small protocols every encoder implements, and the text-embedding result type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True, eq=False)
class TextEmbeddings:
    """Embeddings of a class list, one row per synonym.

    Attributes
    ----------
    embeddings : (E, D) float32 tensor
        L2-normalised text embeddings, one per synonym, in class order and, within a class, in
        the order the synonyms were given.
    class_index : (E,) long tensor
        The class of each embedding (an index into ``class_names``).
    class_names : tuple of str
        The classes as given (synonyms joined by ``;``), ``len == num_classes``.
    synonyms : tuple of str
        The text of each embedding, ``len == E``.
    """

    embeddings: torch.Tensor
    class_index: torch.Tensor
    class_names: tuple[str, ...]
    synonyms: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """How many classes (not synonyms): ``len(class_names)``."""
        return len(self.class_names)

    def to(self, device: torch.device | str) -> TextEmbeddings:
        """The same embeddings on another device.

        Parameters
        ----------
        device : str or torch.device

        Returns
        -------
        TextEmbeddings
            ``embeddings`` and ``class_index`` moved; the names shared.
        """
        return TextEmbeddings(
            self.embeddings.to(device), self.class_index.to(device), self.class_names, self.synonyms
        )


@runtime_checkable
class VisionEncoder(Protocol):
    """A network whose patch features say which patches belong together (DINO in LPOSS).

    Anything with these two members is a vision encoder; no subclassing is needed.
    """

    patch_size: int

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features of a batch of images.

        Parameters
        ----------
        images : (B, 3, H, W) float tensor, RGB in [0, 1]
            The encoder applies its own mean/std normalisation.

        Returns
        -------
        (B, h, w, D) float tensor, each feature L2-normalised; ``h = ceil(H / patch_size)``,
        ``w = ceil(W / patch_size)`` (inputs are padded with black at the bottom/right).
        """
        ...


@runtime_checkable
class VisionLanguageEncoder(Protocol):
    """A network whose patch features compare with text embeddings (CLIP in LPOSS)."""

    patch_size: int

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features in the text space.

        Parameters
        ----------
        images : (B, 3, H, W) float tensor, RGB in [0, 1]

        Returns
        -------
        (B, h, w, D) float tensor, L2-normalised, comparable with :meth:`encode_text`'s
        embeddings (same ``D``).
        """
        ...

    def encode_text(self, class_names: Sequence[str]) -> TextEmbeddings:
        """Embed a class list.

        Parameters
        ----------
        class_names : sequence of str
            ``;`` separates synonyms of one class.

        Returns
        -------
        TextEmbeddings
            (E, D) L2-normalised embeddings, one per synonym, with the class of each.
        """
        ...
