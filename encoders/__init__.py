"""Pluggable encoders for LPOSS: a vision-language model (CLIP) and a vision model (DINO).

Two small protocols say what an encoder is; anything that has these members works, no base
class needed:

- :class:`VisionLanguageEncoder`: ``patch_size``, ``dense_features(images) -> (B, h, w, D)``
  L2-normalised patch features in the text space, ``encode_text(class_names) -> TextEmbeddings``.
- :class:`VisionEncoder`: ``patch_size``, ``dense_features(images) -> (B, h, w, D)``.

``images`` are (B, 3, H, W) float RGB in [0, 1]; each encoder applies its own mean/std.

Built in: :class:`OpenCLIPEncoder` (MaskCLIP features of any open_clip ViT, fast exact text
embeddings with a disk cache) and :class:`TimmViTEncoder` (q/k/v of the last block of DINO,
DINOv2, DINOv3, ...). The text side (templates, synonyms, averaging, cache) is
:class:`TextEncoderMixin`, which any vision-language encoder can reuse by supplying its tokenizer
and text tower. :func:`create` builds them from specs such as
``"open_clip:ViT-B-16@laion2b_s34b_b88k"`` or ``"timm:vit_base_patch16_224.dino"``;
:func:`register` adds more.

Both run in ``precision="fp32"`` (exact, the default), ``"bf16"`` (CPU and CUDA) or ``"fp16"``
(CUDA); features and text embeddings come back as float32 whatever the precision.
"""

from ._openclip import OpenCLIPEncoder
from ._precision import PRECISIONS, check_precision
from ._protocols import TextEmbeddings, VisionEncoder, VisionLanguageEncoder
from ._registry import create, parse_spec, register, registered
from ._text import TextEncoderMixin, cache_namespace, split_class_names
from ._timm import TimmViTEncoder
from ._weights import RandomInitWarning, WeightsUnavailableError

register("open_clip", OpenCLIPEncoder)
register("timm", TimmViTEncoder)

__all__ = [
    "OpenCLIPEncoder",
    "PRECISIONS",
    "RandomInitWarning",
    "TextEmbeddings",
    "TextEncoderMixin",
    "TimmViTEncoder",
    "VisionEncoder",
    "VisionLanguageEncoder",
    "WeightsUnavailableError",
    "cache_namespace",
    "check_precision",
    "create",
    "parse_spec",
    "register",
    "registered",
    "split_class_names",
]
