"""What the ``lposs`` commands share: the model options, building the model, reading class lists."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import overload

from encoders import PRECISIONS

from .pipeline import PUBLISHED_VLM, PUBLISHED_VM
from .preprocess import RESIZE_METHODS

METHODS = ("lposs+", "lposs", "maskclip")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--method, --vlm, --vm, --device, --precision, --random-init, --resize."""
    parser.add_argument("--method", choices=METHODS, default="lposs+",
                        help="lposs+ (default), lposs (no pixel stage) or maskclip (no propagation)")
    parser.add_argument("--vlm", default=PUBLISHED_VLM,
                        help=f"vision-language encoder spec (default: the published CLIP, {PUBLISHED_VLM})")
    parser.add_argument("--vm", default=PUBLISHED_VM,
                        help=f"vision encoder spec (default: the published DINO ViT-B/16, {PUBLISHED_VM})")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="what the networks run in: fp32 (default, exact), bf16 (CPU and CUDA; about 2x "
                             "faster on CPUs with bf16 units, labels a little different) or fp16 (CUDA only)")
    parser.add_argument("--random-init", action="store_true",
                        help="random network weights (smoke tests and timing; the labels are meaningless)")
    parser.add_argument("--resize", choices=RESIZE_METHODS, default="torch",
                        help="how 8-bit images are resized: torch (default, the published rule) or opencv "
                             "(OpenCV's own arithmetic, bit-exact with the published code; needs "
                             "opencv-python-headless)")


def check_device(device: str | None) -> None:
    if device is not None and device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")


@overload
def read_class_list(classes: str, classes_file: None) -> list[str]: ...
@overload
def read_class_list(classes: str | None, classes_file: str | None) -> list[str] | None: ...
def read_class_list(classes: str | None, classes_file: str | None) -> list[str] | None:
    """The validated class list from ``--classes "a,b;c"`` or a file with one class per line;
    None when neither is given. Raises ValueError with a one-line message."""
    import encoders

    if classes and classes_file:
        raise ValueError("give either --classes or --classes-file, not both")
    if classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise ValueError(f"classes file not found: {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif classes is not None:
        names = classes.split(",")
    else:
        return None
    return list(encoders.split_class_names(names)[0])


def build_segmenter(method: str, vlm: str, vm: str, *, device: str | None = None, random_init: bool = False,
                    resize: str = "torch", precision: str = "fp32", config=None, prog: str = "lposs"):
    """LPOSS (``lposs+``, ``lposs``) or MaskCLIP from encoder specs, with the published settings
    (or ``config``). open_clip's log lines are silenced (an error says it in one line);
    ``random_init`` says so on stderr, and so does every other warning of the encoders (bf16 on a CPU
    without bf16 units), in one line; ``resize="opencv"`` needs OpenCV (checked here)."""
    import torch

    import encoders

    from .pipeline import LPOSS, LPOSSConfig, MaskCLIP, encoder_options

    check_device(device)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    config = LPOSSConfig(pixel_refine=method == "lposs+", resize=resize) if config is None else config
    if config.resize == "opencv":
        from .preprocess import _import_cv2

        try:
            _import_cv2()
        except ImportError as error:
            raise ValueError(str(error)) from None
    kwargs = encoder_options(device=device, random_init=random_init, precision=precision)
    if random_init:
        print(f"{prog}: --random-init: the networks have random weights; the labels are meaningless",
              file=sys.stderr)
    logging.disable(logging.ERROR)  # open_clip logs to the root logger
    try:
        # random weights from a fixed seed: every process (resumed runs, torchrun ranks) gets the same
        with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=[]):
            warnings.simplefilter("default")
            torch.manual_seed(0)
            warnings.filterwarnings("ignore", category=encoders.RandomInitWarning)
            vlm_encoder = encoders.create(vlm, **kwargs)
            vm_encoder = None if method == "maskclip" else encoders.create(vm, **kwargs)
    finally:
        logging.disable(logging.NOTSET)
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)):
        print(f"{prog}: warning: {message}", file=sys.stderr)
    return MaskCLIP(vlm_encoder, config) if vm_encoder is None else LPOSS(vlm_encoder, vm_encoder, config)
