"""timm vision-transformer encoder: q/k/v of the last block (DINO, DINOv2 with or without registers,
DINOv3)."""

from __future__ import annotations

import os
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from graphprop._validation import check_choice

from ._base import DenseEncoderBase
from ._weights import WeightsSource, check_file, unavailable, warn_random

__all__ = ["TimmViTEncoder"]

FEATURES = ("q", "k", "v", "x")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmViTEncoder(DenseEncoderBase):
    """A timm vision transformer as LPOSS's vision model (DINO ViT-B/16 in the paper).

    Features (``docs/method.md`` §4): the ``q``, ``k`` or ``v`` third of the last block's
    fused ``qkv`` projection, all heads concatenated, or ``"x"``, the last block's output tokens;
    prefix tokens (CLS, registers) dropped; L2-normalised. The network runs only as far as needed:
    for ``q``/``k``/``v`` it stops after the last block's normalisation and computes just that
    third of the projection. Any input size works (timm's ``dynamic_img_size``: the positional
    embedding is resampled bicubically with antialiasing when the patch grid differs from the
    model's).

    DINOv3 (``"vit_small_patch16_dinov3"``, ``"vit_base_patch16_dinov3"``, ..., timm's ``Eva``
    class) works as well: it has no absolute positional embedding but rotary ones (RoPE) inside
    every attention, and 5 prefix tokens (CLS + 4 registers). Its ``q``/``k`` features are read
    **before RoPE is applied**: the last block's projection of ``norm1(x)``, exactly as for DINO,
    while attention itself sees them rotated by each patch's position. So they carry what the
    patch looks like, not where it is; earlier blocks, and hence ``v`` and ``x``, include RoPE's
    effect through attention as the model computes it. (Models with q/k normalisation, which
    DINOv3 does not have, would likewise be read before it.)

    Parameters
    ----------
    model : str
        A timm model name with its pretrained tag, e.g. ``"vit_base_patch16_224.dino"`` (the
        published DINO ViT-B/16; the same checkpoint as ``torch.hub``'s ``dino_vitb16``),
        ``"vit_small_patch14_dinov2"``, ``"vit_base_patch14_reg4_dinov2"``,
        ``"vit_small_patch16_dinov3"`` (``timm.list_models("*dinov3*")`` lists the DINOv3 sizes).
    pretrained : bool, str, path, or None
        ``True``: timm's pretrained weights for the tag (downloaded through timm's cache); a local
        checkpoint file (``.pth``/``.safetensors``; timm's checkpoint filter converts original
        DINO/DINOv2 files); ``None``/``False``: random weights (a :class:`RandomInitWarning`).
    feature : {"v", "k", "q", "x"}
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    batch_size : int
        Images per forward pass.
    precision : {"fp32", "bf16", "fp16"}
        What the network runs in, weights and activations alike: ``"fp32"`` (the default, exact),
        ``"bf16"`` (CPU and CUDA; warns on hardware without bfloat16 units) or ``"fp16"`` (CUDA
        only). Features come back as float32 either way.
    half : bool
        Deprecated alias of ``precision="fp16"``.
    model_kwargs : dict, optional
        Extra arguments for ``timm.create_model`` (e.g. ``{"depth": 2}`` for a small variant).

    Attributes
    ----------
    model : timm model
        In eval mode, no gradients.
    feature : {"v", "k", "q", "x"}
    patch_size : int
    mean, std : tuple of 3 floats
        From the weights' pretrained config (ImageNet's when it has none).
    """

    def __init__(
        self,
        model: str = "vit_base_patch16_224.dino",
        pretrained: bool | str | os.PathLike | None = True,
        *,
        feature: str = "v",
        device: torch.device | str | None = None,
        batch_size: int = 16,
        precision: str = "fp32",
        half: bool = False,
        model_kwargs: dict | None = None,
    ):
        self.feature = check_choice("feature", feature, FEATURES)
        self._setup(model, pretrained, device=device, precision=precision, half=half, batch_size=batch_size)
        self.model = _create_timm(model, self.source, model_kwargs or {})
        self.model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        _check_structure(model, self.model, feature)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        self._set_geometry("timm", tuple(self._vit.patch_embed.patch_size), cfg.get("mean", _IMAGENET_MEAN),
                           cfg.get("std", _IMAGENET_STD))

    @property
    def _vit(self) -> Any:
        """``model`` as the timm ViT-family model it is: the classes differ (VisionTransformer, Eva,
        ...), so its parts are reached by name, as :func:`_check_structure` verified."""
        return self.model

    def _repr_options(self) -> dict[str, object]:
        return {"feature": self.feature}

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised, H and W multiples of the patch -> (B, h, w, D) unit features."""
        batch, _, height, width = x.shape
        h, w = height // self.patch_size, width // self.patch_size
        blocks = self._vit.blocks
        if self.feature == "x":
            tokens = self._block_output(x, len(blocks) - 1)
        else:
            last = blocks[-1]
            tokens = self._block_output(x, len(blocks) - 2)  # the tokens entering the last block
            # norm1 and qkv act on each token alone, so the prefix tokens can be left out here.
            weight, bias = _qkv_slice(last.attn, "qkv".index(self.feature))
            tokens = F.linear(last.norm1(tokens), weight, bias)
        return F.normalize(tokens.float(), dim=-1).reshape(batch, h, w, -1)

    def _block_output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """The spatial tokens (prefix tokens dropped) after block ``index``: (B, h*w, width)."""
        (tokens,) = self._vit.forward_intermediates(
            x, indices=[index], norm=False, stop_early=True, output_fmt="NLC", intermediates_only=True,
        )
        return tokens


def _create_timm(model: str, source: WeightsSource, kwargs: dict) -> nn.Module:
    import timm

    if not timm.is_model(model):
        raise ValueError(
            f"unknown timm model {model!r}; timm.list_models('*dino*') lists the DINO and DINOv2 names "
            "(e.g. 'vit_base_patch16_224.dino', 'vit_base_patch14_reg4_dinov2')"
        )
    kwargs = {"dynamic_img_size": True, **kwargs}
    if source.kind == "random":
        warn_random("timm", model)
        return timm.create_model(model, pretrained=False, **kwargs)
    if source.kind == "hub" and source.value is not None:
        raise ValueError(
            f"timm takes the pretrained tag in the model name (e.g. 'vit_base_patch16_224.dino'); "
            f"pretrained must be True, a checkpoint file or None, got {source.value!r}"
        )
    check_file(source, "timm", model, "timm")
    if source.kind == "file":
        tried = f"loading {source.value}"
        kwargs["pretrained_cfg_overlay"] = {"file": source.value}
    else:
        cfg = timm.models.get_pretrained_cfg(model)
        hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        tried = f"the Hugging Face Hub ({hub})" if hub else f"downloading {getattr(cfg, 'url', None) or 'the weights'}"
        if cfg is None or not (hub or getattr(cfg, "url", None)):
            raise ValueError(
                f"timm model {model!r} has no pretrained weights to download; name a tagged model "
                "(e.g. 'vit_base_patch16_224.dino') or pass a checkpoint file"
            )
    try:
        return timm.create_model(model, pretrained=True, **kwargs)
    except Exception as error:  # hub, file and state-dict errors all get one clear message
        raise unavailable("timm", model, source, tried, error, "timm") from None


def _check_structure(name: str, model: nn.Module, feature: str) -> None:
    """Refuse models whose last block has no fused q/k/v projection this encoder can read."""
    problem = None
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "forward_intermediates") or not hasattr(model, "patch_embed"):
        problem = "it is not a timm vision transformer with 'blocks', 'patch_embed' and 'forward_intermediates'"
    elif len(blocks) < 2:
        problem = "it has fewer than two blocks"
    elif feature != "x":
        attn = getattr(blocks[-1], "attn", None)
        if not isinstance(getattr(attn, "qkv", None), nn.Linear) or not hasattr(blocks[-1], "norm1"):
            problem = "its last block has no fused 'attn.qkv' projection after 'norm1'"
    if problem:
        raise ValueError(f"timm model {name!r} cannot give {feature!r} features: {problem}")


def _qkv_slice(attn: nn.Module, which: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of the q (0), k (1) or v (2) third of a fused qkv projection.

    Heads are laid out ``(3, heads, head_dim)`` along the output, so a third is the heads of
    that part concatenated in order. Models that keep the biases apart (``q_bias``/``v_bias``,
    EVA/BEiT style) are handled as their forward does.
    """
    qkv = cast(nn.Linear, attn.qkv)  # _check_structure refused models without it
    size = qkv.out_features // 3
    part = slice(which * size, (which + 1) * size)
    bias: torch.Tensor | None = qkv.bias
    if bias is None and getattr(attn, "q_bias", None) is not None:
        # EVA/BEiT-style separate biases: q_bias and v_bias parameters, k_bias None or absent
        q_bias, v_bias = cast(torch.Tensor, attn.q_bias), cast(torch.Tensor, attn.v_bias)
        k_bias = getattr(attn, "k_bias", None)
        if k_bias is None:
            k_bias = torch.zeros_like(q_bias)
        bias = torch.cat([q_bias, k_bias, v_bias])
    return qkv.weight[part], None if bias is None else bias[part]
