"""``lposs segment``: images + class names -> label PNGs, overlays, a summary per image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._command_common import build_segmenter, read_class_list

EXAMPLE_IMAGE = Path(__file__).resolve().parent / "data" / "example.jpg"
DEFAULT_CLASSES = "building;temple;roof,tree,sky,ground;road;pavement"


def _error(message: str) -> None:
    print(f"lposs segment: error: {message}", file=sys.stderr)


def _class_list(args: argparse.Namespace) -> list[str]:
    classes = read_class_list(args.classes, args.classes_file)
    if classes is not None:
        return classes
    if args.images:
        raise ValueError('give the class names: --classes "road,car,sky;cloud" (or --classes-file)')
    return read_class_list(DEFAULT_CLASSES, None)


class _StageBar:
    """A progress bar over the stages of one image (``on_stage`` callback of ``predict``)."""

    def __init__(self, stages: tuple[str, ...], name: str):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=len(stages), desc=name, unit="stage", leave=False,
                         bar_format="{desc} [stage {n_fmt}/{total_fmt}, {elapsed}]")
        self._name = name

    def __call__(self, stage: str) -> None:
        self._bar.set_description_str(f"{self._name}: {stage}", refresh=False)
        self._bar.update()  # the count is the stage now running

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()


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
        model = build_segmenter(args.method, args.vlm, args.vm, device=args.device, random_init=args.random_init,
                                resize=args.resize, precision=args.precision, prog="lposs segment")
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
        with _StageBar(model.stages, path.name) as on_stage:
            scores = model.predict(loaded, classes, on_stage=on_stage)
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
