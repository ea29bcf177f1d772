"""``lposs segment``: images + class names -> label PNGs, overlays, a summary per image."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

EXAMPLE_IMAGE = Path(__file__).resolve().parent / "data" / "example.jpg"
DEFAULT_CLASSES = "building;temple;roof,tree,sky,ground;road;pavement"


def _error(message: str) -> None:
    print(f"lposs segment: error: {message}", file=sys.stderr)


def _class_list(args: argparse.Namespace) -> list[str]:
    import encoders

    if args.classes and args.classes_file:
        raise ValueError("give either --classes or --classes-file, not both")
    if args.classes_file:
        path = Path(args.classes_file)
        if not path.is_file():
            raise ValueError(f"classes file not found: {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif args.classes is not None:
        names = args.classes.split(",")
    elif not args.images:
        names = DEFAULT_CLASSES.split(",")
    else:
        raise ValueError('give the class names: --classes "road,car,sky;cloud" (or --classes-file)')
    classes, _, _ = encoders.split_class_names(names)
    return list(classes)


def _build_model(args: argparse.Namespace):
    import encoders
    from segmentation import LPOSS, LPOSSConfig, MaskCLIP

    kwargs = {"device": args.device}
    if args.random_init:
        kwargs["pretrained"] = None
        print("lposs segment: --random-init: the networks have random weights; the labels are meaningless",
              file=sys.stderr)
    logging.disable(logging.ERROR)  # open_clip logs to the root logger; our errors say it in one line
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=encoders.RandomInitWarning)
            vlm = encoders.create(args.vlm, **kwargs)
            if args.method == "maskclip":
                return MaskCLIP(vlm)
            vm = encoders.create(args.vm, **kwargs)
    finally:
        logging.disable(logging.NOTSET)
    return LPOSS(vlm, vm, LPOSSConfig(pixel_refine=args.method == "lposs+"))


def run_segment(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status (0 ok, 1 some image failed, 2 bad input)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    import encoders

    from .preprocess import load_image
    from .render import class_shares, label_image, overlay_image

    try:
        classes = _class_list(args)
        images = [Path(p) for p in args.images] or [EXAMPLE_IMAGE]
        if args.device is not None and args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
            raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
        model = _build_model(args)
    except encoders.WeightsUnavailableError as error:
        _error(str(error))
        return 2
    except (ValueError, TypeError) as error:
        _error(str(error))
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in tqdm(images, desc="images", unit="image", disable=len(images) < 2):
        try:
            loaded = load_image(path)
        except (OSError, ValueError, TypeError) as error:
            _error(str(error) if str(path) in str(error) else f"cannot read image {path}: {error}")
            failed += 1
            continue
        scores = model.predict(loaded, classes)
        labels = scores.argmax(0)
        stem = path.stem
        label_image(labels, len(classes)).save(out / f"{stem}_labels.png")
        rgb = loaded if loaded.dtype == torch.uint8 else (loaded * 255).round().clamp(0, 255).to(torch.uint8)
        overlay_image(rgb.permute(1, 2, 0).cpu().numpy(), labels, classes).save(out / f"{stem}_overlay.png")
        if args.save_scores:
            np.save(out / f"{stem}_scores.npy", scores.float().cpu().numpy())
        shares = ", ".join(f"{name.split(';')[0]} {share:.1f}%" for name, share in class_shares(labels, classes))
        print(f"{path}: {shares} -> {out / (stem + '_overlay.png')}")
    return 1 if failed else 0
