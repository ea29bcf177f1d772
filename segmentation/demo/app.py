"""The demo's logic, without a server or Gradio: encode once, relabel, render.

:meth:`DemoApp.encode` runs the two networks once per image (cached by the file's digest),
:meth:`DemoApp.relabel` labels the encoded image with any classes, method and settings (text +
propagation only) and :meth:`DemoApp.render` draws the overlay, the legend and the download files.
"""

from __future__ import annotations

import hashlib
import html
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from graphprop._validation import check_int

from ..classnames import read_class_list
from ..methods import Method, available_methods
from ..pipeline import LPOSS, ImageFeatures, LPOSSConfig, MaskCLIP
from ..render import rgb_array

__all__ = ["DemoApp", "DemoInputError", "DemoResult", "EncodedImage", "legend_html", "method_named", "method_names",
           "parse_classes"]

SETTINGS = ("k", "alpha", "tau", "pixel_window")  # the settings on the page; the rest stay as configured
DEFAULT_MAX_PIXELS = 20_000_000
NETWORK_STAGES = ("preprocess", "vlm", "vm")


class DemoInputError(ValueError):
    """Bad input on the page (no image, bad class names, unreadable or too large file); its message is shown there."""


@dataclass(frozen=True, eq=False)
class EncodedImage:
    """One image as the networks saw it. ``rgb``: (H, W, 3) uint8, the original; ``features``: from ``LPOSS.encode``."""

    digest: str
    name: str
    rgb: np.ndarray
    features: ImageFeatures


@dataclass(frozen=True)
class DemoResult:
    """What the page shows: the overlay and label PNG files, (class, % of pixels) largest first, the
    legend as HTML, the result's number (1, 2, ... since the app started) and a status line."""

    overlay_path: Path
    labels_path: Path
    shares: list[tuple[str, float]]
    legend_html: str
    number: int
    status: str = ""


class DemoApp:
    """The demo's state and work, without a server.

    Parameters
    ----------
    vlm, vm : encoders
        Built once; every request builds the chosen method around them (no loading).
    config : LPOSSConfig, optional
        Its k, alpha, tau and pixel_window are the page's defaults.
    max_pixels : int
        Larger images are refused (checked from the file's header, before decoding).
    cache_size : int
        How many encoded images are kept (least recently used goes first).
    out_dir : str or Path, optional
        Where the download files are written (default: a new temporary folder).

    Raises
    ------
    TypeError
        Encoders without the protocols' members, a setting of the wrong type, ``max_pixels`` or
        ``cache_size`` not an integer.
    ValueError
        A setting out of range, ``max_pixels`` or ``cache_size`` below 1.
    """

    keep_results = 16  # result folders kept on disk; Gradio copies what it serves into its own cache

    def __init__(self, vlm, vm, config: LPOSSConfig | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 cache_size: int = 4, out_dir: str | Path | None = None):
        self._encoder = LPOSS(vlm, vm, config)  # validates the encoders and the config
        self.config = self._encoder.config
        self.max_pixels = check_int("max_pixels", max_pixels, minimum=1)
        self.cache_size = check_int("cache_size", cache_size, minimum=1)
        self.encode_count = 0  # passes through the networks, for the status line and the tests
        self._cache: OrderedDict[str, EncodedImage] = OrderedDict()
        self._lock = threading.Lock()
        if out_dir is None:  # a folder of our own, removed with the app (or at exit)
            self._out_dir = Path(tempfile.mkdtemp(prefix="lposs-demo-"))
            weakref.finalize(self, shutil.rmtree, self._out_dir, ignore_errors=True)
        else:
            self._out_dir = Path(out_dir)
        self._results = 0

    @property
    def default_settings(self) -> dict:
        return {name: getattr(self.config, name) for name in SETTINGS}

    def check_image(self, path: str | Path | None) -> tuple[int, int]:
        """(width, height) read from the file's header; :class:`DemoInputError` when there is no file, it
        is not an image, or it has more than ``max_pixels`` pixels."""
        from PIL import Image

        if path is None or not Path(path).is_file():
            raise DemoInputError("No image: upload one (or pick the example) first.")
        name = Path(path).name
        width: int | None
        height: int | None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as opened:
                    width, height = opened.size
        except Image.DecompressionBombError:  # over twice PIL's limit, which `lposs demo` sets to max_pixels
            width, height = None, None
        except Image.UnidentifiedImageError:
            raise DemoInputError(f"Cannot read {name}: it is not an image file (PNG, JPEG, WebP, ...).") from None
        except (OSError, ValueError, SyntaxError) as error:
            raise DemoInputError(f"Cannot read {name}: {error}") from None
        if width is None or height is None or width * height > self.max_pixels:
            size = "" if width is None else f" ({width} x {height})"
            raise DemoInputError(f"{name} is too large{size}: this demo takes images of at most "
                                 f"{self.max_pixels / 1e6:g} megapixels (lposs demo --max-pixels).")
        return width, height

    def encode(self, path: str | Path | None, *, on_stage: Callable[[str], None] | None = None) -> EncodedImage:
        """The image's features: from the cache when this file's content was seen (under any name), else
        both networks run (``encode_count`` goes up by one). Raises :class:`DemoInputError` on a bad file."""
        from ..preprocess import load_image

        self.check_image(path)
        assert path is not None  # check_image refused a missing file
        digest = _file_digest(Path(path))
        with self._lock:
            if digest in self._cache:
                self._cache.move_to_end(digest)
                cached = self._cache[digest]
                return cached if cached.name == Path(path).stem else replace(cached, name=Path(path).stem)
        try:
            loaded = load_image(path)
        except (OSError, ValueError, TypeError) as error:
            raise DemoInputError(f"Cannot read {Path(path).name}: {str(error).split(': ')[-1]}") from None
        features = self._encoder.encode(loaded, on_stage=on_stage)
        entry = EncodedImage(digest, Path(path).stem, rgb_array(loaded), features)
        with self._lock:
            self.encode_count += 1
            self._cache[digest] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return entry

    def model(self, method: str = "LPOSS+", settings: dict | None = None) -> LPOSS | MaskCLIP:
        """The method shown as ``method`` (LPOSS+, LPOSS, MaskCLIP or any registered one, see
        :mod:`segmentation.methods`) with the page's settings around the shared encoders (no loading).

        Raises
        ------
        DemoInputError
            An unknown method or setting, or a bad setting value.
        """
        chosen = method_named(method)
        unknown = set(settings or {}) - set(SETTINGS)
        if unknown:
            raise DemoInputError(f"Unknown settings {sorted(unknown)}: the page has {', '.join(SETTINGS)}.")
        values = {**self.default_settings, **(settings or {})}
        for name in ("k", "pixel_window"):  # sliders send floats
            if isinstance(values[name], float) and values[name].is_integer():
                values[name] = int(values[name])
        try:  # a wrong type (k=7.5 from code) is a TypeError, a wrong value a ValueError
            config = LPOSSConfig(**{**self.config.as_dict(), **values})
        except (TypeError, ValueError) as error:
            raise DemoInputError(f"Settings: {str(error).replace('LPOSSConfig.', '')}") from None
        return chosen.build(self._encoder.vlm, self._encoder.vm, config)

    def stage_order(self, method: str = "LPOSS+") -> list[str]:
        """The stages of one request in the order they start (the network stages only for a new image)."""
        later = [s for s in self.model(method).stages if s not in (*NETWORK_STAGES, "text")]
        return [*NETWORK_STAGES, "text", *later, "render"]

    def relabel(self, encoded: EncodedImage, classes: str | list[str], method: str = "LPOSS+",
                settings: dict | None = None, *, on_stage: Callable[[str], None] | None = None):
        """(H, W) long labels and the class list, from the encoded features: text + propagation only."""
        class_names = parse_classes(classes)
        scores = self.model(method, settings).predict(encoded.features, class_names, on_stage=on_stage)
        return scores.argmax(0), class_names

    def render(self, encoded: EncodedImage, labels: torch.Tensor, class_names: list[str]) -> DemoResult:
        """Write ``<name>_labels.png`` and ``<name>_overlay.png`` to a new result folder; the shares and legend."""
        from ..render import class_shares, label_image, overlay_image

        with self._lock:
            self._results += 1
            number = self._results
        folder = self._out_dir / f"{number:06d}"
        folder.mkdir(parents=True)
        shutil.rmtree(self._out_dir / f"{number - self.keep_results:06d}", ignore_errors=True)
        labels_path, overlay_path = folder / f"{encoded.name}_labels.png", folder / f"{encoded.name}_overlay.png"
        label_image(labels, len(class_names)).save(labels_path)
        overlay_image(encoded.rgb, labels, class_names).save(overlay_path)
        shares = class_shares(labels, class_names)
        return DemoResult(overlay_path, labels_path, shares, legend_html(shares, class_names), number)

    def run(self, image: str | Path | None, classes: str | list[str], method: str = "LPOSS+",
            settings: dict | None = None, *, on_stage: Callable[[str], None] | None = None) -> DemoResult:
        """One request from the page: check the cheap inputs, encode (or re-use), relabel, render."""
        start = time.perf_counter()
        stage = on_stage or (lambda name: None)
        self.check_image(image)  # the cheap checks first, in the order of the page
        class_names = parse_classes(classes)
        self.model(method, settings)  # bad settings fail before the networks run
        before = self.encode_count
        encoded = self.encode(image, on_stage=stage)
        labels, _ = self.relabel(encoded, class_names, method, settings, on_stage=stage)
        stage("render")
        result = self.render(encoded, labels, class_names)
        reused = self.encode_count == before
        how = "re-used the encoded image (text + propagation only)" if reused else "image encoded now"
        seconds = time.perf_counter() - start
        return replace(result, status=f"Result {result.number}: {method} in {seconds:.2f} s, {how}. "
                                      f"Networks ran {self.encode_count} time(s) since the server started.")


def method_names() -> tuple[str, ...]:
    """The display names of the registered methods, as the page lists them (``LPOSS+``, ``LPOSS``, ...)."""
    return tuple(m.display_name for m in available_methods())


def method_named(display_name: str) -> Method:
    """The registered method shown as ``display_name``; :class:`DemoInputError` when there is none."""
    for method in available_methods():
        if method.display_name == display_name:
            return method
    raise DemoInputError(f"Unknown method {display_name!r}: pick one of {', '.join(method_names())}.")


def __getattr__(name: str):
    if name == "METHODS":  # deprecated: a tuple fixed at import would miss the methods registered later
        warnings.warn("segmentation.demo.app.METHODS is deprecated; use method_names() (the registered "
                      "methods, segmentation.methods)", DeprecationWarning, stacklevel=2)
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_classes(classes: str | list[str]) -> list[str]:
    """The validated class list from the page's text box (``,`` between classes, ``;`` between synonyms)."""
    text = ",".join(classes) if isinstance(classes, (list, tuple)) else (classes or "")
    if not text.replace(",", "").replace(";", "").strip():
        raise DemoInputError("No class names: type some, e.g. road, car, sky;cloud")
    try:
        return read_class_list(text, None)
    except ValueError as error:
        raise DemoInputError(f"Class names: {error}") from None


def legend_html(shares: list[tuple[str, float]], class_names: list[str]) -> str:
    """An HTML table: colour, class (its synonyms after the first in grey), % of pixels; largest first."""
    from ..render import class_colours

    colours = class_colours(len(class_names))
    rows = []
    for name, share in shares:
        r, g, b = (int(c) for c in colours[class_names.index(name)])
        first, *others = [html.escape(part.strip()) for part in name.split(";")]
        synonyms = f' <span style="color:#888">({", ".join(others)})</span>' if others else ""
        rows.append(f'<tr><td><span class="lposs-swatch" style="display:inline-block;width:1.2em;height:1.2em;'
                    f'background:rgb({r},{g},{b});border:1px solid #333"></span></td>'
                    f'<td class="lposs-class">{first}{synonyms}</td>'
                    f'<td style="text-align:right">{share:.1f}%</td></tr>')
    return ('<table class="lposs-legend-table"><thead><tr><th></th><th>class</th><th>share of pixels</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
