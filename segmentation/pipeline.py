"""LPOSS / LPOSS+ and the MaskCLIP baseline, end to end: image + class names -> scores, labels.

The classes hold the networks and an :class:`~segmentation.config.LPOSSConfig` and call the stage
functions of :mod:`segmentation.stages`; the method is that of ``docs/method.md`` (§ below).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

import encoders

from .config import LPOSSConfig
from .preprocess import ImageInput, load_image, resize_image, window_boxes, working_size
from .stages import _patch_stage, _pixel_stage, merge_windows, patch_centers

__all__ = ["ImageFeatures", "LPOSS", "LPOSSConfig", "MaskCLIP"]

PUBLISHED_VLM = "open_clip:ViT-B-16@laion2b_s34b_b88k"
PUBLISHED_VM = "timm:vit_base_patch16_224.dino"


@dataclass(frozen=True, eq=False)
class ImageFeatures:
    """What the networks say about one image; :meth:`LPOSS.predict` takes it in place of the image.

    Attributes
    ----------
    image : (3, h, w) float tensor in [0, 1], the image at the working size
    original_size : (H, W) of the input image
    boxes : windows ``(y1, y2, x1, x2)`` in working-size pixels
    vlm_features : (n, gh, gw, D) L2-normalised VLM patch features, one grid per window
    vm_features : (n, gh', gw', D') L2-normalised VM patch features
    vm_patch_size : the VM's patch size (patch centres: :func:`~segmentation.stages.patch_centers`)
    timings : seconds of the "preprocess", "vlm" and "vm" stages spent on this image (a batch's
        seconds shared evenly over its images; ``segmentation.batch`` reports them per image)
    """

    image: Tensor
    original_size: tuple[int, int]
    boxes: list[tuple[int, int, int, int]]
    vlm_features: Tensor
    vm_features: Tensor | None
    vm_patch_size: int
    timings: dict = field(default_factory=dict)


class _Segmenter:
    """What LPOSS and MaskCLIP share: preprocessing, encoding, text, output sizes."""

    def __init__(self, vlm, vm, config: LPOSSConfig | None, device):
        if not isinstance(vlm, encoders.VisionLanguageEncoder):
            raise TypeError("vlm must implement encoders.VisionLanguageEncoder "
                            "(patch_size, dense_features, encode_text)")
        if vm is not None and not isinstance(vm, encoders.VisionEncoder):
            raise TypeError("vm must implement encoders.VisionEncoder (patch_size, dense_features)")
        if config is None:
            config = LPOSSConfig()
        if not isinstance(config, LPOSSConfig):
            raise TypeError(f"config must be an LPOSSConfig, got {type(config).__name__}")
        self.vlm, self.vm, self.config = vlm, vm, config
        self.device = torch.device(device) if device is not None else torch.device(getattr(vlm, "device", "cpu"))

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages :meth:`predict` on an image goes through, in order (``on_stage`` names them)."""
        networks = ("vlm",) if self.vm is None else ("vlm", "vm")
        return ("text", "preprocess", *networks, *self._propagation_stages())

    def _propagation_stages(self) -> tuple[str, ...]:
        return ()

    # ------------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode(self, image: ImageInput, *, on_stage: Callable[[str], None] | None = None) -> ImageFeatures:
        """Resize, cut into windows and run both networks once (all windows in one batch).

        Parameters
        ----------
        image : path, PIL image, (H, W, 3) uint8 array or (3, H, W) float tensor in [0, 1]
            (any :data:`~segmentation.preprocess.ImageInput`)
        on_stage : optional callable, called with each stage's name as it starts ("preprocess",
            "vlm", "vm"), e.g. to drive a progress bar

        Returns
        -------
        :class:`ImageFeatures` of the image, for :meth:`predict`.
        """
        return self.encode_batch([image], on_stage=on_stage)[0]

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[ImageInput], *,
                     on_stage: Callable[[str], None] | None = None) -> list[ImageFeatures]:
        """:meth:`encode` of several images, the windows of all of them in one batch per network.

        Parameters
        ----------
        images : sequence of images (any :data:`ImageInput`), of any sizes
        on_stage : as for :meth:`encode`, called once per stage for the whole batch

        Returns
        -------
        list of :class:`ImageFeatures`, one per image, in order; each one's ``timings`` are the
        batch's seconds divided evenly over its images.
        """
        report = on_stage or _no_stage
        timer = StageTimer()  # the seconds of each stage, shared out as ImageFeatures.timings

        def stage(name: str) -> None:
            report(name)
            timer(name)

        stage("preprocess")
        cfg = self.config
        prepared = []  # (resized (3, h, w), original (H, W), boxes)
        for image in images:
            loaded = load_image(image)
            original = (int(loaded.shape[1]), int(loaded.shape[2]))
            size = working_size(*original, cfg.short_side, cfg.long_side_cap)
            resized = resize_image(loaded, size, cfg.resize).to(self.device)
            boxes = (window_boxes(size[0], size[1], cfg.window, cfg.stride) if cfg.sliding
                     else [(0, size[0], 0, size[1])])
            prepared.append((resized, original, boxes))
        if not prepared:
            return []
        sizes = {(y2 - y1, x2 - x1) for _, _, boxes in prepared for y1, y2, x1, x2 in boxes}
        groups = [prepared] if len(sizes) == 1 else [[item] for item in prepared]  # one batch needs one size
        stage("vlm")
        vlm_features = [self.vlm.dense_features(self._windows(group)) for group in groups]
        vm_features = None
        if self.vm is not None:
            stage("vm")
            vm_features = [self.vm.dense_features(self._windows(group)) for group in groups]
        timer.stop()
        patch = int(getattr(self.vm, "patch_size", self.vlm.patch_size))
        share = {key: value / len(prepared) for key, value in timer.seconds.items()}
        features = []
        for g, group in enumerate(groups):
            first = 0
            for resized, original, boxes in group:
                last = first + len(boxes)
                vm = None if vm_features is None else vm_features[g][first:last]
                features.append(ImageFeatures(resized, original, boxes, vlm_features[g][first:last], vm, patch,
                                              dict(share)))
                first = last
        return features

    @staticmethod
    def _windows(prepared) -> Tensor:
        """(n, 3, wh, ww) tensor: the windows of the prepared images, in order (one window size)."""
        return torch.stack([resized[:, y1:y2, x1:x2] for resized, _, boxes in prepared for y1, y2, x1, x2 in boxes])

    # ------------------------------------------------------------------ predict
    def predict(self, image: ImageInput | ImageFeatures | list, class_names: Sequence[str] | str, *,
                on_stage: Callable[[str], None] | None = None):
        """Class scores at the original image size.

        Parameters
        ----------
        image : path, PIL image, (H, W, 3) uint8 array, (3, H, W) float tensor in [0, 1], an
            :class:`ImageFeatures` from :meth:`encode`, or a list of these (gives a list).
        class_names : sequence of str (``;`` separates synonyms), one comma-separated str, or the
            :class:`encoders.TextEmbeddings` of ``self.vlm.encode_text`` (text encoded once for many images)
        on_stage : optional callable, called with each stage's name as it starts (the names of
            :attr:`stages`; the networks' stages are skipped for an :class:`ImageFeatures`)

        Returns
        -------
        (num_classes, H, W) float tensor; synonyms are reduced by max per class.
        """
        if isinstance(image, list):
            return [self.predict(item, class_names, on_stage=on_stage) for item in image]
        stage = on_stage or _no_stage
        stage("text")
        # first: a bad class list fails before the networks run
        text = class_names if isinstance(class_names, encoders.TextEmbeddings) else self.vlm.encode_text(class_names)
        features = image if isinstance(image, ImageFeatures) else self.encode(image, on_stage=stage)
        with torch.inference_mode():
            scores = self._propagate(features, text, stage)  # (E, h, w)
            scores = scores.to(text.embeddings.device)
            index = text.class_index.tolist()
            per_class = torch.stack([
                scores[[e for e, c in enumerate(index) if c == cls]].amax(dim=0) for cls in range(text.num_classes)
            ])
            return F.interpolate(per_class[None], size=features.original_size, mode="bilinear",
                                 align_corners=False)[0]

    def segment(self, image, class_names):
        """The class index of every pixel: the argmax of :meth:`predict`.

        Parameters
        ----------
        image, class_names : as for :meth:`predict`

        Returns
        -------
        (H, W) long tensor at the original image size (a list of them for a list of images).
        """
        scores = self.predict(image, class_names)
        if isinstance(scores, list):
            return [s.argmax(0) for s in scores]
        return scores.argmax(0)

    def _initial_scores(self, features: ImageFeatures, text) -> Tensor:
        """Initial scores (§5): cosine similarities of VLM patches and text embeddings.

        Returns
        -------
        (n, E, gh', gw') tensor, one map per window and embedding, resized bilinearly onto the VM's
        patch grid (gh', gw') where that differs from the VLM's.
        """
        embeddings = text.embeddings.to(features.vlm_features.device, features.vlm_features.dtype)
        scores = (features.vlm_features @ embeddings.T).permute(0, 3, 1, 2)
        if features.vm_features is not None and scores.shape[-2:] != features.vm_features.shape[1:3]:
            scores = F.interpolate(scores, size=features.vm_features.shape[1:3], mode="bilinear", align_corners=False)
        return scores

    def _propagate(self, features: ImageFeatures, text, stage: Callable[[str], None]) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


def encoder_options(*, device=None, random_init: bool = False, precision: str = "fp32") -> dict:
    """The keyword arguments of :func:`encoders.create` for both networks.

    Parameters
    ----------
    device : where the networks run (default: each encoder's default)
    random_init : build the networks with random weights (``pretrained=None``: tests, timing)
    precision : "fp32", "bf16" or "fp16"; checked here, before anything is built, and passed on
        only when it is not fp32 (every encoder's default), so encoders without the option work

    Returns
    -------
    dict of keyword arguments.
    """
    kwargs: dict = {"device": device}
    if random_init:
        kwargs["pretrained"] = None
    where = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if encoders.check_precision(precision, where) != "fp32":
        kwargs["precision"] = precision
    return kwargs


def _no_stage(name: str) -> None:
    pass


class StageTimer:
    """An ``on_stage`` callback that adds up the seconds spent in each stage.

    Passed as ``model.predict(image, classes, on_stage=timer)``, it is called with each stage's name
    as the stage starts; a stage runs until the next one starts or :meth:`stop` is called:

    >>> timer = StageTimer()
    >>> timer("vlm"); timer("vm"); timer("vlm"); timer.stop()
    >>> sorted(timer.seconds), all(seconds >= 0 for seconds in timer.seconds.values())
    (['vlm', 'vm'], True)

    Parameters
    ----------
    seconds : optional dict of stage name -> seconds to add to (earlier totals, e.g. a resumed
        evaluation); kept as :attr:`seconds`
    """

    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds: dict[str, float] = {} if seconds is None else seconds
        self._current: tuple[str, float] | None = None

    def __call__(self, name: str) -> None:
        self.stop()
        self._current = (name, time.perf_counter())

    def stop(self) -> None:
        """End the stage running now (if any)."""
        if self._current is not None:
            name, start = self._current
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self._current = None


class MaskCLIP(_Segmenter):
    """The no-propagation baseline (§8): window-merged MaskCLIP scores.

    The released LPOSS code has no path for it; this definition is the project's.

    Parameters
    ----------
    vlm : a :class:`encoders.VisionLanguageEncoder` (CLIP; MaskCLIP features)
    config : :class:`~segmentation.config.LPOSSConfig`; only its preprocessing fields are read
    device : where the scores are merged; default the VLM's device
    """

    def __init__(self, vlm, config: LPOSSConfig | None = None, *, device=None):
        super().__init__(vlm, None, config, device)

    def _propagate(self, features: ImageFeatures, text, stage) -> Tensor:
        h, w = features.image.shape[1:]
        return merge_windows(self._initial_scores(features, text), features.boxes, (h, w))


class LPOSS(_Segmenter):
    """LPOSS (patch propagation) and LPOSS+ (then pixel propagation, ``config.pixel_refine``).

    Parameters
    ----------
    vlm : a :class:`encoders.VisionLanguageEncoder` (CLIP; MaskCLIP features)
    vm : a :class:`encoders.VisionEncoder` (DINO)
    config : :class:`~segmentation.config.LPOSSConfig`, the published settings by default
    device : where propagation runs; default the VLM's device
    """

    def __init__(self, vlm, vm, config: LPOSSConfig | None = None, *, device=None):
        if vm is None:
            raise TypeError("LPOSS needs a vision encoder (vm); MaskCLIP is the method without one")
        super().__init__(vlm, vm, config, device)

    @classmethod
    def from_pretrained(cls, vlm: str = PUBLISHED_VLM, vm: str = PUBLISHED_VM, config: LPOSSConfig | None = None,
                        *, device=None, random_init: bool = False, precision: str = "fp32") -> LPOSS:
        """LPOSS with the published encoders, or others by spec.

        Parameters
        ----------
        vlm, vm : encoder specs for :func:`encoders.create` (default open_clip ViT-B-16
            laion2b_s34b_b88k and DINO ViT-B/16)
        config : :class:`~segmentation.config.LPOSSConfig`, the published settings by default
        device : where the networks and propagation run
        random_init : build the networks with random weights (tests, timing)
        precision : "fp32", "bf16" or "fp16", what both networks run in (see
            :class:`encoders.OpenCLIPEncoder`); propagation stays in float32 / float64 whatever it is

        Returns
        -------
        :class:`LPOSS`.
        """
        kwargs = encoder_options(device=device, random_init=random_init, precision=precision)
        return cls(encoders.create(vlm, **kwargs), encoders.create(vm, **kwargs), config, device=device)

    def _propagation_stages(self) -> tuple[str, ...]:
        return ("patch propagation", "pixel propagation") if self.config.pixel_refine else ("patch propagation",)

    def _propagate(self, features: ImageFeatures, text, stage) -> Tensor:
        if features.vm_features is None:
            raise ValueError("LPOSS needs ImageFeatures with vm_features (LPOSS.encode gives them); these have none")
        cfg = self.config
        stage("patch propagation")
        initial = self._initial_scores(features, text)  # (n, E, gh, gw)
        n, e, gh, gw = initial.shape
        vm = features.vm_features.to(initial.device)
        centers = patch_centers(features.boxes, (gh, gw), features.vm_patch_size, device=initial.device)
        z = _patch_stage(
            vm.reshape(n * gh * gw, -1), initial.permute(0, 2, 3, 1).reshape(n * gh * gw, e), centers,
            k=cfg.k, gamma=cfg.gamma, sigma=cfg.sigma, pix_dist_pow=cfg.pix_dist_pow, settings=cfg.propagation,
        )
        h, w = features.image.shape[1:]
        merged = merge_windows(z.reshape(n, gh, gw, e).permute(0, 3, 1, 2), features.boxes, (h, w))
        if not cfg.pixel_refine:
            return merged
        stage("pixel propagation")
        return _pixel_stage(features.image.to(merged.device), merged, window=cfg.pixel_window, tau=cfg.tau,
                            settings=cfg.propagation)
