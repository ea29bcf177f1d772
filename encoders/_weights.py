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
    """``kind`` is ``"random"``, ``"file"`` or ``"hub"``; ``value`` the file path or the hub tag."""

    kind: str
    value: str | None = None

    def describe(self) -> str:
        if self.kind == "random":
            return "random weights"
        if self.kind == "file":
            return f"local file {self.value}"
        return f"pretrained tag {self.value!r}" if self.value else "the default pretrained weights"


def weights_source(pretrained: object, name: str = "pretrained") -> WeightsSource:
    """Classify a ``pretrained`` argument: ``None``/``False`` random, ``True`` the hub default,
    a path to a file (or anything that looks like one), or a hub tag."""
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
    """Raise a clear error when a local checkpoint file does not exist."""
    # a "file" source always carries its path (weights_source builds it so)
    if source.kind == "file" and not Path(cast(str, source.value)).is_file():
        raise WeightsUnavailableError(
            f"cannot load weights for {library} model {model!r}: the checkpoint file {source.value} does not exist. "
            f"Pass an existing file ({', '.join(CHECKPOINT_SUFFIXES)}), e.g. "
            f"'{spec_prefix}:{model}@/path/to/weights.safetensors'."
        )


def warn_random(library: str, model: str) -> None:
    warnings.warn(
        f"{library} model {model!r} is built with random weights (pretrained=None): "
        "its outputs are meaningless except for tests and timing",
        RandomInitWarning,
        stacklevel=3,
    )


def unavailable(library: str, model: str, source: WeightsSource, tried: str, error: BaseException,
                spec_prefix: str) -> WeightsUnavailableError:
    """One clear error for weights that could not be loaded, naming what was tried and what to do."""
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
