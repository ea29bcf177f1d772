"""Class lists, prompt templates and the text-embedding cache (memory and disk)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

Template = str | Callable[[str], str]


def split_class_names(class_names: Sequence[str] | str) -> tuple[tuple[str, ...], tuple[str, ...], list[int]]:
    """Validate a class list and expand its synonyms.

    Parameters
    ----------
    class_names : sequence of str, or one str
        One entry per class; ``;`` separates synonyms of one class (``"sky;cloud"``). A single
        string is read as a comma-separated list (``"road, car, sky;cloud"``). Whitespace around
        names is ignored.

    Returns
    -------
    classes : tuple of str, one per class (synonyms re-joined with ``;``)
    synonyms : tuple of str, one per embedding, in class order
    class_index : list of int, the class of each synonym

    Raises
    ------
    ValueError
        For an empty list, an empty class name or synonym, or a name given twice (compared
        without regard to case, as CLIP's tokenizer lower-cases text).
    """
    if isinstance(class_names, str):
        class_names = class_names.split(",")
    if not isinstance(class_names, Sequence) or not all(isinstance(name, str) for name in class_names):
        raise TypeError(f"class_names must be a list of strings, got {class_names!r}")
    if len(class_names) == 0:
        raise ValueError("class_names is empty: give at least one class name")
    classes: list[str] = []
    synonyms: list[str] = []
    class_index: list[int] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(class_names):
        parts = [part.strip() for part in entry.split(";")]
        if any(part == "" for part in parts):
            what = "is empty" if entry.strip() == "" else "has an empty synonym"
            raise ValueError(f"class_names[{i}] ({entry!r}) {what}; ';' separates synonyms of one class")
        for part in parts:
            key = " ".join(part.casefold().split())
            if key in seen:
                first = seen[key]
                where = "in the same class" if first == i else f"also in class_names[{first}]"
                raise ValueError(f"class name {part!r} in class_names[{i}] is given twice ({where})")
            seen[key] = i
            synonyms.append(part)
            class_index.append(i)
        classes.append(";".join(parts))
    return tuple(classes), tuple(synonyms), class_index


def openai_imagenet_templates() -> tuple[Template, ...]:
    """The 80 ImageNet prompt templates of CLIP, as open_clip ships them."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(OPENAI_IMAGENET_TEMPLATES)


def check_templates(templates: Iterable[Template] | None) -> tuple[Template, ...]:
    """``None`` -> the 80 OpenAI ImageNet templates; else strings with ``{}`` or callables."""
    if templates is None:
        return openai_imagenet_templates()
    if isinstance(templates, str):
        templates = (templates,)
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates is empty: give at least one prompt template such as 'a photo of a {}.'")
    for template in templates:
        if isinstance(template, str):
            if "{}" not in template:
                raise ValueError(f"template {template!r} has no '{{}}' where the class name goes")
        elif not callable(template):
            raise TypeError(f"a template must be a string with '{{}}' or a callable, got {template!r}")
    return templates


def render_prompts(templates: Sequence[Template], name: str) -> list[str]:
    """The prompts of one synonym, one per template."""
    return [template.replace("{}", name) if isinstance(template, str) else template(name) for template in templates]


def prompts_key(prompts: Sequence[str]) -> str:
    """Cache key of one synonym's prompts (the template set and the name are both in it)."""
    return hashlib.sha256("\x1f".join(prompts).encode("utf-8")).hexdigest()


def default_cache_root() -> Path:
    """``$LPOSS_CACHE_DIR``, else ``$XDG_CACHE_HOME/lposs``, else ``~/.cache/lposs``."""
    if os.environ.get("LPOSS_CACHE_DIR"):
        return Path(os.environ["LPOSS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lposs"


def tensors_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A digest of tensors' names, shapes, dtypes and bytes: identifies weights themselves."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in named_tensors:
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TextEmbeddingCache:
    """Embeddings remembered per key, in memory and (optionally) in one ``.npz`` file on disk.

    One cache holds the embeddings of one model with one set of weights (the ``namespace``, which
    carries a digest of the weights); the key of an entry identifies the prompts. A file that
    cannot be read is ignored (with a log message) and replaced on the next write.
    """

    def __init__(self, namespace: str, directory: Path | None):
        self.namespace = namespace
        self.path = None if directory is None else Path(directory) / f"{_safe_name(namespace)}.npz"
        self._memory: dict[str, torch.Tensor] = {}
        self._disk_loaded = False

    def __len__(self) -> int:
        return len(self._memory)

    def get(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The cached embeddings among ``keys`` (missing keys are left out)."""
        if any(key not in self._memory for key in keys):
            self._load_disk()
        return {key: self._memory[key] for key in keys if key in self._memory}

    def put(self, entries: dict[str, torch.Tensor]) -> None:
        """Remember new entries ((D,) float32 CPU tensors) and write the disk file."""
        if not entries:
            return
        self._memory.update(entries)
        if self.path is not None:
            self._write_disk()

    def _load_disk(self) -> None:
        if self._disk_loaded or self.path is None:
            return
        self._disk_loaded = True
        if not self.path.is_file():
            return
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, embeddings = data["keys"], data["embeddings"]
                if keys.ndim != 1 or embeddings.ndim != 2 or len(keys) != len(embeddings):
                    raise ValueError(f"inconsistent arrays {keys.shape} and {embeddings.shape}")
                if not np.isfinite(embeddings).all():
                    raise ValueError("non-finite values")
                loaded = {str(k): torch.from_numpy(np.array(e, dtype=np.float32))
                          for k, e in zip(keys, embeddings, strict=True)}
        except Exception as error:  # a corrupt or foreign file: ignore it, it is rewritten
            logger.warning("ignoring unreadable text-embedding cache %s (%s); it will be rewritten", self.path, error)
            return
        for key, value in loaded.items():
            self._memory.setdefault(key, value)

    def _write_disk(self) -> None:
        assert self.path is not None
        self._load_disk()  # keep what other runs stored
        keys = sorted(self._memory)
        embeddings = torch.stack([self._memory[key] for key in keys]).numpy()
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=self.path.stem, suffix=".tmp.npz", dir=self.path.parent)
            with os.fdopen(handle, "wb") as file:
                np.savez(file, keys=np.array(keys), embeddings=embeddings)
            os.replace(tmp, self.path)  # atomic: readers never see a half-written file
            tmp = None
        except OSError as error:  # a read-only or full disk costs speed, never the result
            logger.warning("could not write the text-embedding cache %s (%s)", self.path, error)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
