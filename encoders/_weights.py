"""Where weights come from: a hub tag, a local file, or random initialisation."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")


class WeightsUnavailableError(RuntimeError):
    """The weights asked for cannot be had (offline, missing file, a file that does not fit)."""


class RandomInitWarning(UserWarning):
    """A model was built with random weights on purpose (``pretrained=None``)."""


@dataclass(frozen=True)
class WeightsSource:
    """Where an encoder's weights come from.

    Attributes
    ----------
    kind : {"random", "file", "hub"}
    value : str or None
        The file path (``"file"``) or the hub tag (``"hub"``; ``None`` for the default weights).
    """

    kind: str
    value: str | None = None

    def describe(self) -> str:
        """A short phrase for messages and ``repr``: ``"random weights"``, ``"local file /w.pt"``, ..."""
        if self.kind == "random":
            return "random weights"
        if self.kind == "file":
            return f"local file {self.value}"
        return f"pretrained tag {self.value!r}" if self.value else "the default pretrained weights"


def weights_source(pretrained: object, name: str = "pretrained") -> WeightsSource:
    """Classify a ``pretrained`` argument.

    Parameters
    ----------
    pretrained : None, bool, str or path
        ``None``/``False``: random weights; ``True``: the hub default; a path to a file (or
        anything that looks like one: a separator, a leading ``.``/``~``, a checkpoint suffix,
        an existing path); any other string: a hub tag.
    name : str
        The argument's name, for the message.

    Returns
    -------
    WeightsSource

    Raises
    ------
    TypeError
        For anything else (an empty string included).
    """
    if pretrained is None or pretrained is False:
        return WeightsSource("random")
    if pretrained is True:
        return WeightsSource("hub")
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)
    if not isinstance(pretrained, str) or not pretrained.strip():
        raise TypeError(f"{name} must be a pretrained tag, a checkpoint file path, True or None; got {pretrained!r}")
    looks_like_path = (
        os.sep in pretrained
        or pretrained.startswith((".", "~"))
        or pretrained.lower().endswith(CHECKPOINT_SUFFIXES)
        or os.path.exists(pretrained)
    )
    if looks_like_path:
        path = Path(pretrained).expanduser()
        return WeightsSource("file", str(path))
    return WeightsSource("hub", pretrained)


def check_file(source: WeightsSource, library: str, model: str, spec_prefix: str) -> None:
    """Raise a clear error when a local checkpoint file does not exist.

    Parameters
    ----------
    source : WeightsSource
    library, model, spec_prefix : str
        For the message (``"open_clip"``, the model name, the spec prefix to suggest).

    Raises
    ------
    WeightsUnavailableError
        When ``source`` is a file that does not exist.
    """
    # a "file" source always carries its path (weights_source builds it so)
    if source.kind == "file" and not Path(cast(str, source.value)).is_file():
        raise WeightsUnavailableError(
            f"cannot load weights for {library} model {model!r}: the checkpoint file {source.value} does not exist. "
            f"Pass an existing file ({', '.join(CHECKPOINT_SUFFIXES)}), e.g. "
            f"'{spec_prefix}:{model}@/path/to/weights.safetensors'."
        )


def warn_random(library: str, model: str) -> None:
    """Emit a :class:`RandomInitWarning` for ``model`` of ``library`` (at the caller's caller)."""
    warnings.warn(
        f"{library} model {model!r} is built with random weights (pretrained=None): "
        "its outputs are meaningless except for tests and timing",
        RandomInitWarning,
        stacklevel=3,
    )


def unavailable(library: str, model: str, source: WeightsSource, tried: str, error: BaseException,
                spec_prefix: str) -> WeightsUnavailableError:
    """One clear error for weights that could not be loaded, naming what was tried and what to do.

    Parameters
    ----------
    library, model : str
    source : WeightsSource
    tried : str
        What was tried (``"the Hugging Face Hub (timm/...)"``, ``"loading /w.pt"``).
    error : BaseException
        The library's own error, cut to 300 characters in the message.
    spec_prefix : str
        The spec prefix to suggest in the advice.

    Returns
    -------
    WeightsUnavailableError
        To be raised by the caller (``raise ... from None``).
    """
    cause = " ".join(str(error).split()) or type(error).__name__
    if len(cause) > 300:
        cause = cause[:297] + "..."
    if source.kind == "file":
        advice = (
            "The file exists but could not be loaded into this architecture: check that it holds the weights "
            f"of {model!r} (a state dict saved from the same {library} model)."
        )
    else:
        advice = (
            "Without network access, download the weights elsewhere and pass the local file, e.g. "
            f"'{spec_prefix}:{model}@/path/to/weights.safetensors' (or pretrained='/path/to/weights.safetensors'); "
            "or use random weights (pretrained=None, --random-init) for tests and timing."
        )
    return WeightsUnavailableError(
        f"cannot load weights for {library} model {model!r} ({source.describe()}): tried {tried}, "
        f"which failed with: {cause}. {advice}"
    )
