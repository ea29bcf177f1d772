"""What the ``lposs`` commands share: the model options, building the model, the one error line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator

from encoders import PRECISIONS

from ..methods import available_methods, get_method
from ..pipeline import PUBLISHED_VLM, PUBLISHED_VM
from ..preprocess import RESIZE_METHODS

__all__ = ["CommandError", "add_model_arguments", "build_segmenter", "check_device", "error", "quiet_encoder_logs",
           "run_command", "segmenter_from_args", "start_run"]


class CommandError(Exception):
    """A run that cannot go on: ``message`` goes to stderr in one line, ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def error(prog: str, message: object, status: int = 2) -> int:
    """Print ``<prog>: error: <message>`` on stderr (one line) and return ``status`` (2: bad input)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def run_command(prog: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``body(args)``; a :class:`CommandError` it raises becomes one error line and its status."""
    try:
        return body(args)
    except CommandError as failure:
        return error(prog, failure, failure.status)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--method`` (the registered methods), ``--vlm``, ``--vm``, ``--device``, ``--precision``,
    ``--random-init`` and ``--resize`` to ``parser``."""
    methods = available_methods()
    described = ", ".join(f"{m.name} ({m.description})" for m in methods)
    parser.add_argument("--method", choices=[m.name for m in methods], default="lposs+",
                        help=f"{described}; default lposs+")
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
    """Raise ValueError unless ``device`` is None, ``cpu``, ``cuda`` or ``cuda:N``."""
    if device is not None and device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")


class _BelowLevel(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > self.level


# open_clip logs on the root logger (``logging.info(...)``), timm and huggingface_hub on their own
_CHATTY_LOGGERS = ("open_clip", "timm", "huggingface_hub")


@contextlib.contextmanager
def quiet_encoder_logs(level: int = logging.ERROR) -> Iterator[None]:
    """Drop the log records up to ``level`` of the encoder libraries while the block runs.

    Records logged on the root logger itself (open_clip's) are filtered there; the loggers of
    :data:`_CHATTY_LOGGERS` get ``level + 1`` as their level. Both are restored on exit; no other
    logger and no process-wide setting (``logging.disable``) is touched.
    """
    root = logging.getLogger()
    quiet = _BelowLevel(level)
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    root.addFilter(quiet)
    for logger in loggers:
        logger.setLevel(level + 1)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        for logger, previous in zip(loggers, levels, strict=True):
            logger.setLevel(previous)


def build_segmenter(method: str, vlm: str, vm: str, *, device: str | None = None, random_init: bool = False,
                    resize: str = "torch", precision: str = "fp32", prog: str = "lposs"):
    """The registered ``method`` around the encoders ``vlm`` and ``vm``, with the published settings.

    Parameters
    ----------
    method : str
        A registered method (:func:`segmentation.methods.get_method`): ``lposs+``, ``lposs``,
        ``maskclip``, or one a user registered.
    vlm, vm : str
        Encoder specs (:func:`encoders.create`); ``vm`` is not built for a method that does not
        use it.
    device, precision, random_init : as :func:`segmentation.pipeline.encoder_options` takes them
    resize : str
        ``torch`` or ``opencv`` (needs OpenCV: checked here).
    prog : str
        The program named in the stderr lines.

    Returns
    -------
    The segmenter the method builds. The encoders' log lines are silenced while they are built
    (an error says it in one line); ``random_init`` says so on stderr, and so does every other
    warning of the encoders (bf16 on a CPU without bf16 units), in one line each.

    Raises
    ------
    ValueError
        A bad device or method, or ``resize="opencv"`` without OpenCV.
    """
    import torch

    import encoders

    from ..pipeline import LPOSSConfig, encoder_options

    check_device(device)
    chosen = get_method(method)
    config = LPOSSConfig(resize=resize)
    if config.resize == "opencv":
        from ..preprocess import _import_cv2

        try:
            _import_cv2()
        except ImportError as missing:
            raise ValueError(str(missing)) from None
    kwargs = encoder_options(device=device, random_init=random_init, precision=precision)
    if random_init:
        print(f"{prog}: --random-init: the networks have random weights; the labels are meaningless",
              file=sys.stderr)
    # random weights from a fixed seed: every process (resumed runs, torchrun ranks) gets the same
    with quiet_encoder_logs(), warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=[]):
        warnings.simplefilter("default")
        torch.manual_seed(0)
        warnings.filterwarnings("ignore", category=encoders.RandomInitWarning)
        vlm_encoder = encoders.create(vlm, **kwargs)
        vm_encoder = encoders.create(vm, **kwargs) if chosen.uses_vm else None
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)):
        print(f"{prog}: warning: {message}", file=sys.stderr)
    return chosen.build(vlm_encoder, vm_encoder, config)


def segmenter_from_args(args: argparse.Namespace, prog: str, *, method: str | None = None,
                        device: str | None = None):
    """:func:`build_segmenter` of the model options :func:`add_model_arguments` added to ``args``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed with :func:`add_model_arguments`' options.
    prog : str
        The program named in the stderr lines.
    method, device : str, optional
        Given, they replace ``args.method`` and ``args.device``.

    Returns
    -------
    The segmenter (:func:`build_segmenter`).

    Raises
    ------
    CommandError
        A bad option, or weights that are not available.
    """
    import encoders

    try:
        return build_segmenter(method or args.method, args.vlm, args.vm, device=device or args.device,
                               random_init=args.random_init, resize=args.resize, precision=args.precision, prog=prog)
    except (encoders.WeightsUnavailableError, ValueError, TypeError) as failure:
        raise CommandError(str(failure)) from None


@contextlib.contextmanager
def start_run(args: argparse.Namespace, prog: str) -> Iterator[tuple]:
    """The ranks (:class:`~segmentation.distributed.Distributed`) and the model of a run.

    Yields ``(dist, model)``: ``model`` is :func:`build_segmenter` of the model options in ``args``
    on this rank's device. The process group is closed when the block ends, however it ends.

    Raises
    ------
    CommandError
        ``torch.distributed`` cannot start, or the model cannot be built (bad option, weights
        unavailable).
    """
    from ..distributed import Distributed

    try:
        dist = Distributed(args.device)
    except (RuntimeError, ValueError) as failure:
        raise CommandError(f"cannot start torch.distributed: {failure}") from None
    try:
        yield dist, segmenter_from_args(args, prog, device=dist.device)
    finally:
        dist.close()
