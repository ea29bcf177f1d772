"""The text side of any vision-language encoder: class lists and synonyms, prompt templates,
batched (and truncated) prompt encoding, averaging over templates, and the text-embedding cache
(memory and disk).

:class:`TextEncoderMixin` puts these together into ``encode_text``; an encoder that uses it
supplies only how to tokenise prompts and embed a batch of token ids (or, for a model that takes
strings, how to embed a batch of prompts) and what identifies its text weights.
:class:`~encoders.OpenCLIPEncoder` is one such user.
"""

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
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._images import check_batch_size, chunks
from ._protocols import TextEmbeddings

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
    classes : tuple of str
        One per class (synonyms re-joined with ``;``).
    synonyms : tuple of str
        One per embedding, in class order.
    class_index : list of int
        The class of each synonym.

    Raises
    ------
    TypeError
        For something other than a string or a sequence of strings.
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
    """The 80 ImageNet prompt templates of CLIP, as open_clip ships them.

    Returns
    -------
    tuple of callables
        ``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``, each ``name -> prompt``.
    """
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(OPENAI_IMAGENET_TEMPLATES)


def check_templates(templates: Iterable[Template] | None) -> tuple[Template, ...]:
    """Check a ``templates`` option.

    Parameters
    ----------
    templates : iterable of str or callables, one str, or None
        Strings with ``{}`` where the class name goes, or callables ``name -> prompt``;
        ``None``: the 80 OpenAI ImageNet templates.

    Returns
    -------
    tuple of str or callables

    Raises
    ------
    ValueError
        For no templates or a string without ``{}``.
    TypeError
        For a template that is neither a string nor callable.
    """
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
    """The prompts of one synonym, one per template.

    Parameters
    ----------
    templates : sequence of str or callables
    name : str
        The synonym.

    Returns
    -------
    list of str
        ``len(templates)`` prompts.
    """
    return [template.replace("{}", name) if isinstance(template, str) else template(name) for template in templates]


def prompts_key(prompts: Sequence[str]) -> str:
    """Cache key of one synonym's prompts (the template set and the name are both in it).

    Parameters
    ----------
    prompts : sequence of str

    Returns
    -------
    str
        A SHA-256 hex digest.
    """
    return hashlib.sha256("\x1f".join(prompts).encode("utf-8")).hexdigest()


def default_cache_root() -> Path:
    """Where the project caches things.

    Returns
    -------
    Path
        ``$LPOSS_CACHE_DIR``, else ``$XDG_CACHE_HOME/lposs``, else ``~/.cache/lposs``.
    """
    if os.environ.get("LPOSS_CACHE_DIR"):
        return Path(os.environ["LPOSS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lposs"


def cache_directory(text_cache: bool | str | os.PathLike | None) -> Path | None:
    """Where an encoder's ``text_cache`` option puts the disk cache.

    Parameters
    ----------
    text_cache : bool, path or None
        ``True``: :func:`default_cache_root` ``/ "text-embeddings"``; a path: that folder;
        ``False`` or ``None``: no disk cache (memory only).

    Returns
    -------
    Path or None
    """
    if text_cache is False or text_cache is None:
        return None
    if text_cache is True:
        return default_cache_root() / "text-embeddings"
    return Path(text_cache).expanduser()


def cache_namespace(model: str, dtype: torch.dtype, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """The namespace of a text tower's cache entries: model name, precision and weights digest.

    Parameters
    ----------
    model : str
        The model's name (readable part of the file name).
    dtype : torch.dtype
        What the text tower runs in: each precision is cached apart.
    named_tensors : iterable of (str, tensor)
        The text tower's weights (e.g. ``state_dict().items()``, image tower left out), so that
        random-init or fine-tuned models sharing a name never share entries.

    Returns
    -------
    str
        ``"{model}-{dtype}-{digest}"``, e.g. ``"ViT-B-16-float32-3f2a..."``.
    """
    return f"{model}-{str(dtype).removeprefix('torch.')}-{tensors_digest(named_tensors)}"


def tensors_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A digest of tensors' names, shapes, dtypes and bytes: identifies weights themselves.

    Parameters
    ----------
    named_tensors : iterable of (str, tensor)

    Returns
    -------
    str
        A 32-character BLAKE2b hex digest.
    """
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

    Parameters
    ----------
    namespace : str
        See :func:`cache_namespace`; the file is ``{namespace}.npz`` (made file-name safe).
    directory : Path or None
        The folder of the file; ``None`` keeps the cache in memory only.
    """

    def __init__(self, namespace: str, directory: Path | None):
        self.namespace = namespace
        self.path = None if directory is None else Path(directory) / f"{_safe_name(namespace)}.npz"
        self._memory: dict[str, torch.Tensor] = {}
        self._disk_loaded = False

    def get(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The cached embeddings among ``keys``.

        Parameters
        ----------
        keys : sequence of str

        Returns
        -------
        dict of str to (D,) float32 CPU tensor
            Missing keys are left out. The disk file is read the first time a key is missing.
        """
        if any(key not in self._memory for key in keys):
            self._load_disk()
        return {key: self._memory[key] for key in keys if key in self._memory}

    def put(self, entries: dict[str, torch.Tensor]) -> None:
        """Remember new entries and write the disk file (atomically; a failed write only logs).

        Parameters
        ----------
        entries : dict of str to (D,) float32 CPU tensor
        """
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


def embed_prompts(
    prompts: Sequence[str],
    *,
    tokenize: Callable[[list[str]], torch.Tensor],
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    device: torch.device | str,
    prompt_lengths: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Embed prompts through a text tower in batches, each L2-normalised.

    Parameters
    ----------
    prompts : sequence of str, P >= 1
    tokenize : callable
        ``list[str]`` (P,) -> (P, L) integer token ids, padded to a common context ``L``.
    embed_tokens : callable
        (b, l) token ids on ``device`` -> (b, D) unnormalised embeddings, any float dtype.
    batch_size : int
        Prompts per call of ``embed_tokens``.
    device : str or torch.device
        Where the token ids are sent.
    prompt_lengths : callable, optional
        (P, L) token ids -> (P,) the positions each prompt needs (up to and including the token
        its embedding is read at). Given (and returning lengths), prompts are sorted by that
        length and each batch is cut to its longest prompt: ``embed_tokens`` then sees ``l <= L``
        positions, which is exact for a causal tower read at that token. ``None`` (or a callable
        returning ``None``): every batch has the full ``L``, in the given order.
    progress : bool
        A progress bar when there are at least three batches.

    Returns
    -------
    (P, D) float32 CPU tensor, row ``i`` the unit embedding of ``prompts[i]``.

    Raises
    ------
    TypeError
        For one string instead of a list of them.
    ValueError
        For an empty list of prompts.
    """
    if isinstance(prompts, str):
        raise TypeError(f"prompts must be a list of strings, got one string {prompts!r}")
    if len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of strings, got an empty one")
    tokens = tokenize(list(prompts))
    lengths = None if prompt_lengths is None else prompt_lengths(tokens)
    order = torch.arange(len(prompts)) if lengths is None else torch.argsort(lengths, stable=True)
    out: torch.Tensor | None = None
    batches = list(chunks(len(prompts), batch_size))
    bar = tqdm(batches, desc="text embeddings", unit="batch", leave=False, disable=not progress or len(batches) < 3)
    for part in bar:
        index = order[part]
        batch = tokens[index].to(device)
        if lengths is not None:
            batch = batch[:, : int(lengths[index].max())]
        embedded = embed_tokens(batch)
        if out is None:
            out = torch.empty(len(prompts), embedded.shape[-1], dtype=torch.float32)
        out[index] = F.normalize(embedded.float(), dim=-1).cpu()
    assert out is not None  # prompts is not empty: at least one batch ran
    return out


def average_over_templates(prompt_embeddings: torch.Tensor, group_sizes: Sequence[int]) -> list[torch.Tensor]:
    """Per synonym: the mean of its prompts' unit embeddings, L2-normalised again.

    Parameters
    ----------
    prompt_embeddings : (P, D) float tensor
        Unit embeddings of every prompt, synonym after synonym.
    group_sizes : sequence of int
        How many prompts (templates) each synonym has; they sum to ``P``.

    Returns
    -------
    list of (D,) float32 CPU tensors, one unit vector per synonym.
    """
    out, start = [], 0
    for size in group_sizes:
        mean = prompt_embeddings[start:start + size].mean(dim=0)
        out.append(F.normalize(mean, dim=-1).cpu())
        start += size
    return out


class TextEncoderMixin:
    """``encode_text`` for a vision-language encoder: templates, synonyms, averaging and cache.

    ``encode_text(class_names)`` splits the class list into synonyms
    (:func:`split_class_names`), fills every prompt template with each synonym, embeds the
    prompts that are not cached yet, L2-normalises each, averages over the templates and
    normalises again (``docs/method.md`` §3), and returns one row per synonym with its class
    (a class's score is later the max over its synonyms). Embeddings are remembered per synonym
    and template set, in memory and, optionally, on disk, under :meth:`text_cache_namespace`.

    A class using it calls :meth:`init_text` in its ``__init__``, has a ``device`` attribute, and
    either implements

    - :meth:`tokenize` and :meth:`embed_tokens` (and :meth:`prompt_lengths` for a causal tower
      that may run on fewer positions), and the batching of :func:`embed_prompts` is used; or
    - :meth:`encode_prompts` itself, for a model that takes strings;

    plus :meth:`text_cache_namespace` (what identifies its text weights and precision;
    :func:`cache_namespace` builds one).

    Attributes
    ----------
    templates : tuple of str or callables
        The prompt templates, ``"{}"`` standing for the class name.
    text_batch_size : int
        Prompts per forward pass of the text tower.
    progress : bool
        Whether a progress bar is shown while encoding many prompts.
    """

    templates: tuple[Template, ...]
    text_batch_size: int
    progress: bool
    device: torch.device

    def init_text(self, *, templates: Iterable[Template] | None, text_cache: bool | str | os.PathLike | None,
                  text_batch_size: int = 256, progress: bool = True) -> None:
        """Check and store the text settings.

        Parameters
        ----------
        templates : sequence of str or callables, or None
            Prompt templates, ``"{}"`` standing for the class name; ``None``: CLIP's 80 ImageNet
            templates.
        text_cache : bool, path or None
            The disk cache (see :func:`cache_directory`); memory caching is always on.
        text_batch_size : int
            Prompts per forward pass of the text tower.
        progress : bool
            Show a progress bar while encoding many prompts.

        Raises
        ------
        ValueError, TypeError
            For empty templates, a template string without ``{}``, a template that is neither a
            string nor callable, or a ``text_batch_size`` that is not a positive integer.
        """
        self.templates = check_templates(templates)
        self.text_batch_size = check_batch_size(text_batch_size, "text_batch_size")
        self.progress = progress
        self._text_cache_dir = cache_directory(text_cache)
        self._cache: TextEmbeddingCache | None = None

    # ----------------------------------------------------------------- what a user supplies
    def text_cache_namespace(self) -> str:
        """What identifies the text tower's weights and precision (see :func:`cache_namespace`)."""
        raise NotImplementedError(f"{type(self).__name__} must define text_cache_namespace()")

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """(P,) prompts -> (P, L) integer token ids (used by the default :meth:`encode_prompts`)."""
        raise NotImplementedError(f"{type(self).__name__} must define tokenize() and embed_tokens(), "
                                  "or encode_prompts()")

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(b, l) token ids on the device -> (b, D) unnormalised text embeddings."""
        raise NotImplementedError(f"{type(self).__name__} must define tokenize() and embed_tokens(), "
                                  "or encode_prompts()")

    def prompt_lengths(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """(P, L) token ids -> (P,) positions each prompt needs, or ``None`` for the full context.

        The default, ``None``, always runs the full context; a causal tower read at a per-prompt
        token returns how far each prompt must run (see :func:`embed_prompts`).
        """
        return None

    # ----------------------------------------------------------------- what it gets
    @torch.inference_mode()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(P,) prompts -> (P, D) float32 CPU L2-normalised embeddings through the text tower.

        Batches of ``text_batch_size`` through :meth:`embed_tokens`; when :meth:`prompt_lengths`
        gives lengths, prompts are sorted by length and each batch is cut to its longest prompt.
        """
        return embed_prompts(prompts, tokenize=self.tokenize, embed_tokens=self.embed_tokens,
                             batch_size=self.text_batch_size, device=self.device,
                             prompt_lengths=self.prompt_lengths, progress=self.progress)

    @torch.inference_mode()
    def encode_text(self, class_names: Sequence[str] | str) -> TextEmbeddings:
        """Embed a class list, one embedding per synonym.

        Parameters
        ----------
        class_names : sequence of str (or one comma-separated str)
            ``;`` separates synonyms of one class: ``["road", "car", "sky;cloud"]`` gives 4
            embeddings with ``class_index = [0, 1, 2, 2]``.

        Returns
        -------
        TextEmbeddings
            ``embeddings`` (E, D) float32 L2-normalised on the encoder's device and
            ``class_index`` (E,) long. Synonyms seen before (this run or, with the disk cache, an
            earlier one) are not encoded again.

        Raises
        ------
        TypeError, ValueError
            For a class list that is not strings, is empty, or names a class twice.
        """
        classes, synonyms, class_index = split_class_names(class_names)
        prompts = [render_prompts(self.templates, name) for name in synonyms]
        keys = [prompts_key(p) for p in prompts]
        cache = self._embedding_cache()
        known = cache.get(keys)
        missing = [i for i, key in enumerate(keys) if key not in known]
        if missing:
            fresh = self._embed_synonyms([prompts[i] for i in missing])
            new = {keys[i]: fresh[j] for j, i in enumerate(missing)}
            cache.put(new)
            known.update(new)
        embeddings = torch.stack([known[key] for key in keys]).to(self.device)
        return TextEmbeddings(
            embeddings=embeddings,
            class_index=torch.tensor(class_index, dtype=torch.long, device=self.device),
            class_names=classes,
            synonyms=synonyms,
        )

    def _embedding_cache(self) -> TextEmbeddingCache:
        if self._cache is None:
            self._cache = TextEmbeddingCache(self.text_cache_namespace(), self._text_cache_dir)
        return self._cache

    def _embed_synonyms(self, prompts: list[list[str]]) -> list[torch.Tensor]:
        """Per synonym: encode each prompt, normalise, average over templates, normalise again."""
        prompt_embeddings = self.encode_prompts([p for group in prompts for p in group])
        return average_over_templates(prompt_embeddings, [len(group) for group in prompts])
