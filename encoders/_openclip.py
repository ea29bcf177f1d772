"""open_clip vision-language encoder: MaskCLIP dense features and fast exact text embeddings."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import DenseEncoderBase
from ._text import Template, TextEncoderMixin, cache_namespace
from ._weights import WeightsSource, check_file, unavailable, warn_random

if TYPE_CHECKING:  # pragma: no cover
    from open_clip.transformer import ResidualAttentionBlock

__all__ = ["OpenCLIPEncoder"]


class OpenCLIPEncoder(TextEncoderMixin, DenseEncoderBase):
    """A CLIP vision transformer from open_clip, as LPOSS's vision-language model.

    Dense features follow MaskCLIP (``docs/method.md`` §2): the last residual block keeps only
    its attention's value path, ``z = x + out_proj(W_v ln_1(x) + b_v)``, then the block's MLP,
    ``ln_post`` and the visual projection; the CLS token is dropped; ``dense_features`` gives
    (B, ceil(H / p), ceil(W / p), D) unit vectors, ``D`` the text-embedding width (512 for
    ViT-B-16). Text embeddings follow §3 through :class:`TextEncoderMixin` (``encode_text``): every
    synonym is embedded with each prompt template, each prompt embedding is L2-normalised, averaged
    over templates and normalised again. This class supplies only open_clip's tokenizer and text
    tower (the truncated causal pass) as the mixin's hooks.

    Parameters
    ----------
    model : str
        An open_clip model name (``open_clip.list_models()``), any ViT (B/L/H, patch 14/16/32).
    pretrained : str, path, or None
        A pretrained tag (``open_clip.list_pretrained_tags_by_model(model)``, downloaded through
        open_clip's cache), a local checkpoint file (``.bin``/``.pt``/``.safetensors``), or ``None``
        for random weights (a :class:`RandomInitWarning` is emitted).
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    templates : sequence of str or callables, optional
        Prompt templates, ``"{}"`` standing for the class name. Default: CLIP's 80 ImageNet
        templates (``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``).
    batch_size : int
        Images per forward pass in :meth:`dense_features`.
    text_batch_size : int
        Prompts per forward pass of the text tower.
    precision : {"fp32", "bf16", "fp16"}
        What the image and text towers run in, weights and activations alike: ``"fp32"`` (the
        default, exact with the published method), ``"bf16"`` (CPU and CUDA; the whole model is
        cast, the MaskCLIP value path included; warns on hardware without bfloat16 units) or
        ``"fp16"`` (CUDA only). Features and text embeddings come back as float32 either way;
        the text cache keeps each precision apart.
    half : bool
        Deprecated alias of ``precision="fp16"``.
    text_cache : bool or path
        Remember text embeddings on disk: ``True`` under ``$LPOSS_CACHE_DIR`` (default
        ``~/.cache/lposs``)``/text-embeddings``, a path for another folder, ``False`` for memory only.
    truncate_text : bool or None
        Run the text tower only up to the longest prompt of a batch (exact for causal towers read at
        the end-of-text token). ``None``: whenever the model allows it; ``False``: always the full
        context.
    progress : bool
        Show a progress bar while encoding many prompts.
    model_kwargs : dict, optional
        Extra arguments for ``open_clip.create_model``.

    Attributes
    ----------
    model : open_clip model
        In eval mode, no gradients.
    tokenizer : open_clip tokenizer
        ``(P,)`` strings -> ``(P, context)`` token ids.
    truncate_text : bool
        Whether the text tower runs only up to each batch's longest prompt.
    patch_size : int
    mean, std : tuple of 3 floats
        The normalisation applied to images in [0, 1].
    templates : tuple of str or callables
    """

    def __init__(
        self,
        model: str = "ViT-B-16",
        pretrained: str | os.PathLike | None = "laion2b_s34b_b88k",
        *,
        device: torch.device | str | None = None,
        templates: Iterable[Template] | None = None,
        batch_size: int = 16,
        text_batch_size: int = 256,
        precision: str = "fp32",
        half: bool = False,
        text_cache: bool | str | os.PathLike = True,
        truncate_text: bool | None = None,
        progress: bool = True,
        model_kwargs: dict | None = None,
    ):
        self._setup(model, pretrained, device=device, precision=precision, half=half, batch_size=batch_size)
        self.init_text(templates=templates, text_cache=text_cache, text_batch_size=text_batch_size,
                       progress=progress)
        self.model = _create_open_clip(model, self.source, self.device, self.precision, model_kwargs or {})
        self.model.eval().requires_grad_(False)

        visual = self.model.visual
        _check_maskclip_support(model, visual)
        self._set_geometry("open_clip", visual.patch_size, getattr(visual, "image_mean", None) or _OPENAI_MEAN,
                           getattr(visual, "image_std", None) or _OPENAI_STD)

        import open_clip

        self.tokenizer = open_clip.get_tokenizer(model)
        self._text_tower = _TextTower.of(self.model)
        can_truncate = self._text_tower is not None and self._text_tower.truncatable
        if truncate_text and not can_truncate:
            raise ValueError(
                f"truncate_text=True, but the text tower of {model!r} is not causal with end-of-text pooling; "
                "its output depends on the padding, so the full context is needed (use truncate_text=None)"
            )
        self.truncate_text = can_truncate if truncate_text is None else bool(truncate_text)

    def _repr_options(self) -> dict[str, object]:
        return {"templates": len(self.templates)}

    # ------------------------------------------------------------------ images
    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised, H and W multiples of the patch -> (B, h, w, D) unit features."""
        visual = self.model.visual
        x = visual.conv1(x)  # (B, width, h, w)
        batch, width, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(batch, 1, width)
        x = torch.cat([cls, x], dim=1) + self._positional_embedding(h, w).to(x.dtype)
        x = visual.patch_dropout(x)  # the identity in eval mode
        x = visual.ln_pre(x)
        transformer = visual.transformer
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[:-1]:
            x = block(x)
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        x = _value_path(transformer.resblocks[-1], x)
        x = visual.ln_post(x[:, 1:])
        if visual.proj is not None:
            x = x @ visual.proj
        return F.normalize(x.float(), dim=-1).reshape(batch, h, w, -1)

    def _positional_embedding(self, h: int, w: int) -> torch.Tensor:
        """The (1 + h*w, width) positional embedding for an h x w patch grid.

        As the published MaskCLIP code: the patch part is resized bicubically
        (``align_corners=False``, no antialiasing), the CLS position is kept.
        """
        pos = self.model.visual.positional_embedding
        grid_h, grid_w = self.model.visual.grid_size
        if (h, w) == (grid_h, grid_w):
            return pos
        patches = pos[1:].float().reshape(1, grid_h, grid_w, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(h, w), mode="bicubic", align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(h * w, -1).to(pos.dtype)
        return torch.cat([pos[:1], patches], dim=0)

    # ------------------------------------------------------------------ text (TextEncoderMixin's hooks)
    def text_cache_namespace(self) -> str:
        """Model name, precision and a digest of the text tower's weights (the image tower left out)."""
        tower = [(n, t) for n, t in self.model.state_dict().items() if not n.startswith("visual.")]
        return cache_namespace(self.name, self.dtype, tower)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """(P,) prompts -> (P, context) token ids through the model's open_clip tokenizer."""
        return self.tokenizer(prompts)

    def prompt_lengths(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """(P, context) -> (P,) positions up to each end-of-text token when ``truncate_text`` holds."""
        if not self.truncate_text:
            return None
        return cast(_TextTower, self._text_tower).needed_lengths(tokens)  # truncatable, so not None

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(b, l) token ids -> (b, D): the truncated pass when ``truncate_text`` holds, else
        open_clip's own ``encode_text`` at the full context."""
        if self.truncate_text:
            return cast(_TextTower, self._text_tower).encode(tokens)
        return self.model.encode_text(tokens)


# ---------------------------------------------------------------------- helpers
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _create_open_clip(model: str, source: WeightsSource, device: torch.device, precision: str, kwargs: dict):
    """The open_clip model in ``precision``: fp16 as open_clip casts it (layer norms kept in float32),
    bf16 cast whole (every weight, so every activation is bfloat16)."""
    created = _create_open_clip_fp(model, source, device, "fp16" if precision == "fp16" else "fp32", kwargs)
    return created.to(torch.bfloat16) if precision == "bf16" else created


def _create_open_clip_fp(model: str, source: WeightsSource, device: torch.device, precision: str, kwargs: dict):
    import open_clip

    if model not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model!r}; open_clip.list_models() lists the names "
            f"(ViTs such as 'ViT-B-16', 'ViT-L-14', 'ViT-H-14')"
        )
    if source.kind == "random":
        warn_random("open_clip", model)
        return open_clip.create_model(model, pretrained=None, device=device, precision=precision,
                                      pretrained_text=False, **kwargs)
    check_file(source, "open_clip", model, "open_clip")
    if source.kind == "hub":
        tags = open_clip.list_pretrained_tags_by_model(model)
        if source.value is None or source.value not in tags:
            raise ValueError(
                f"open_clip model {model!r} has no pretrained tag {source.value!r}; its tags are {tags} "
                "(or pass a local checkpoint file)"
            )
        cfg = open_clip.get_pretrained_cfg(model, source.value)
        tried = (f"the Hugging Face Hub ({cfg['hf_hub'].rstrip('/')})" if cfg.get("hf_hub")
                 else f"downloading {cfg.get('url') or 'the weights'}")
    else:
        tried = f"loading {source.value}"
    try:
        return open_clip.create_model(model, pretrained=source.value, device=device, precision=precision,
                                      require_pretrained=True, **kwargs)
    except Exception as error:  # hub, file and state-dict errors all get one clear message
        raise unavailable("open_clip", model, source, tried, error, "open_clip") from None


def _check_maskclip_support(name: str, visual: nn.Module) -> None:
    """MaskCLIP needs a plain ViT: standard residual blocks and tokens that reach ``ln_post``."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    problem = None
    if not isinstance(visual, VisionTransformer):
        problem = f"its image tower is a {type(visual).__name__}, not a vision transformer"
    elif getattr(visual, "attn_pool", None) is not None:
        problem = "its vision transformer pools with attention (CoCa-style), so patch tokens never reach the projection"
    elif not all(isinstance(b, ResidualAttentionBlock) for b in visual.transformer.resblocks):
        problem = "its vision blocks are custom (qk-norm / scaled attention), without a plain value projection"
    elif len(visual.transformer.resblocks) < 1:
        problem = "its vision transformer has no blocks"
    if problem:
        raise ValueError(
            f"open_clip model {name!r} cannot give MaskCLIP dense features: {problem}. "
            "Use an open_clip ViT such as 'ViT-B-16', 'ViT-L-14' or 'ViT-H-14'."
        )


def _value_path(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last block: ``z = x + out_proj(W_v ln_1(x) + b_v)``, then ``z + mlp(ln_2(z))``.

    ``x``: (B, L, width) batch-first tokens. Layer scale, when a model has it, is applied as in the
    block itself (the identity for the published ViT-B-16 weights).
    """
    attn = block.attn
    width = x.shape[-1]
    if attn.in_proj_weight is not None:
        weight = attn.in_proj_weight[2 * width:]
    else:
        weight = attn.v_proj_weight
    bias = attn.in_proj_bias[2 * width:] if attn.in_proj_bias is not None else None
    v = attn.out_proj(F.linear(block.ln_1(x), weight, bias))
    z = x + block.ls_1(v)
    return z + block.ls_2(block.mlp(block.ln_2(z)))


class _TextTower:
    """The pieces of an open_clip text transformer, for a pass over fewer than all positions."""

    def __init__(self, token_embedding, positional_embedding, transformer, ln_final, text_projection,
                 attn_mask, pool_type, eos_id):
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.attn_mask = attn_mask
        self.pool_type = pool_type
        self.eos_id = eos_id

    @classmethod
    def of(cls, model: nn.Module) -> _TextTower | None:
        import open_clip
        from open_clip.transformer import TextTransformer

        if isinstance(model, open_clip.CLIP):
            owner, pool_type, eos_id = model, model.text_pool_type, getattr(model, "text_eos_id", None)
        elif isinstance(text := getattr(model, "text", None), TextTransformer):
            if text.cls_emb is not None or getattr(text, "use_pad_mask", False):
                return None
            owner, pool_type, eos_id = text, text.pool_type, getattr(text, "eos_id", None)
        else:
            return None
        return cls(owner.token_embedding, owner.positional_embedding, owner.transformer, owner.ln_final,
                   owner.text_projection, owner.attn_mask, pool_type, eos_id)

    @property
    def truncatable(self) -> bool:
        """Causal attention and pooling at the end-of-text token: later tokens change nothing."""
        if self.attn_mask is None or self.pool_type not in ("argmax", "eos"):
            return False
        if self.pool_type == "eos" and self.eos_id is None:
            return False
        mask = self.attn_mask.detach().float().cpu()
        n = mask.shape[-1]
        causal = torch.full((n, n), float("-inf")).triu_(1)
        return mask.shape == (n, n) and torch.equal(mask, causal)

    def needed_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """(P, context) token ids -> (P,) the positions each prompt needs: up to its pooled token."""
        if self.pool_type == "argmax":
            pooled = tokens.argmax(dim=-1)
        else:
            pooled = (tokens == self.eos_id).int().argmax(dim=-1)
        return pooled + 1

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids, L <= context -> (B, D) unnormalised text features."""
        from open_clip.transformer import text_global_pool

        length = tokens.shape[1]
        cast = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast) + self.positional_embedding[:length].to(cast)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return x

