"""``lposs demo`` without a browser: the app's functions (encode, relabel, render, run) with small
random-weight encoders, the Gradio page's construction, and the real command serving its page."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segmentation.demo
from conftest import SMALL_CONFIG_KWARGS
from segmentation import LPOSS, LPOSSConfig, MaskCLIP, cli
from segmentation.demo import DemoApp, DemoInputError
from segmentation.demo.app import legend_html, parse_classes
from segmentation.render import class_colours

SMALL = LPOSSConfig(**SMALL_CONFIG_KWARGS)


@pytest.fixture()
def app(small_encoders, tmp_path):
    return DemoApp(*small_encoders, SMALL, out_dir=tmp_path / "results")


def _png(path, height=40, width=60, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def _count_network_calls(encoders_pair, monkeypatch):
    calls = {"vlm": 0, "vm": 0}
    for name, encoder in zip(("vlm", "vm"), encoders_pair, strict=True):
        original = encoder.dense_features

        def counted(images, _f=original, _n=name):
            calls[_n] += 1
            return _f(images)

        monkeypatch.setattr(encoder, "dense_features", counted)
    return calls


# --------------------------------------------------------------------------- encode
def test_encode_runs_the_networks_once_per_image_content(app, small_encoders, tmp_path, monkeypatch):
    """The cache is keyed by the file's content: the same bytes under another name are not encoded
    again; another image is; the least recently used image leaves a full cache."""
    calls = _count_network_calls(small_encoders, monkeypatch)
    first = app.encode(_png(tmp_path / "a.png"))
    assert app.encode_count == 1 and calls == {"vlm": 1, "vm": 1}
    assert first.rgb.shape == (40, 60, 3) and first.rgb.dtype == np.uint8 and first.name == "a"
    np.testing.assert_array_equal(first.rgb, np.asarray(Image.open(tmp_path / "a.png")))
    assert first.features.original_size == (40, 60) and first.features.vm_features is not None
    shutil.copy(tmp_path / "a.png", tmp_path / "same bytes.png")
    again = app.encode(tmp_path / "same bytes.png")
    assert again.features is first.features and again.name == "same bytes"  # downloads take the new name
    assert app.encode(tmp_path / "a.png") is first
    assert app.encode_count == 1 and calls == {"vlm": 1, "vm": 1}
    app.cache_size = 1
    app.encode(_png(tmp_path / "b.png", seed=1))
    assert app.encode_count == 2 and calls == {"vlm": 2, "vm": 2}
    app.encode(tmp_path / "a.png")  # pushed out by b.png
    assert app.encode_count == 3


def test_greyscale_and_16_bit_images_are_encoded_as_rgb(app, tmp_path):
    grey = app.encode(_png(tmp_path / "grey.png", mode="L"))
    assert grey.rgb.shape == (40, 60, 3)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16)).save(deep)
    assert (app.encode(deep).rgb == 255).all()


# --------------------------------------------------------------------------- relabel
@pytest.mark.parametrize("method", ["LPOSS+", "LPOSS", "MaskCLIP"])
def test_relabel_equals_a_full_prediction_with_the_same_settings(app, small_encoders, tmp_path, method):
    """Relabelling cached features gives exactly what the method computes from the image itself."""
    path = _png(tmp_path / "a.png", height=50, width=70)
    encoded = app.encode(path)
    settings = {"k": 12.0, "alpha": 0.9, "tau": 0.05, "pixel_window": 5.0}  # sliders send floats
    labels, names = app.relabel(encoded, "road, car, sky;cloud", method, settings)
    assert names == ["road", "car", "sky;cloud"] and labels.shape == (50, 70) and labels.dtype == torch.long
    config = LPOSSConfig(**{**SMALL.as_dict(), "k": 12, "alpha": 0.9, "tau": 0.05, "pixel_window": 5,
                            "pixel_refine": method == "LPOSS+"})
    vlm, vm = small_encoders
    reference = MaskCLIP(vlm, config) if method == "MaskCLIP" else LPOSS(vlm, vm, config)
    expected = reference.predict(str(path), names)
    got = app.model(method, settings).predict(encoded.features, names)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(labels, got.argmax(0))
    assert app.encode_count == 1


def test_the_settings_reach_the_propagation(app, tmp_path):
    encoded = app.encode(_png(tmp_path / "a.png"))
    lposs = app.model("LPOSS", None)
    assert lposs.config.k == SMALL.k and lposs.config.pixel_refine is False
    plus = app.model("LPOSS+", {"k": 7.0, "pixel_window": 9})
    assert (plus.config.k, plus.config.pixel_window, plus.config.pixel_refine) == (7, 9, True)
    assert plus.config.short_side == SMALL.short_side  # what encoding depends on is not a page setting
    strong = app.model("LPOSS+", {"alpha": 0.99}).predict(encoded.features, ["a", "b"])
    weak = app.model("LPOSS+", {"alpha": 0.5}).predict(encoded.features, ["a", "b"])
    assert not torch.allclose(strong, weak)
    assert app.default_settings == {"k": 30, "alpha": 0.95, "tau": 0.01, "pixel_window": 13}
    published = LPOSSConfig()
    assert (published.k, published.alpha, published.tau, published.pixel_window) == (400, 0.95, 0.01, 13)


@pytest.mark.parametrize(
    "method, settings, message",
    [
        ("LPOSS+", {"pixel_window": 4}, "pixel_window must be an odd integer"),
        ("LPOSS+", {"alpha": 1.0}, "alpha must be in (0, 1)"),
        ("LPOSS+", {"k": 0}, "k must be a positive integer"),
        ("LPOSS+", {"k": 7.5}, "k must be a positive integer, got float 7.5"),  # a TypeError in LPOSSConfig
        ("LPOSS+", {"window": 3}, "Unknown settings ['window']"),
        ("SAM", None, "Unknown method 'SAM'"),
    ],
)
def test_bad_settings_are_refused_with_a_message(app, method, settings, message):
    with pytest.raises(DemoInputError) as error:
        app.model(method, settings)
    assert message in str(error.value) and "LPOSSConfig" not in str(error.value)


# --------------------------------------------------------------------------- render
def test_render_writes_the_label_png_the_overlay_and_the_legend(app, tmp_path):
    encoded = app.encode(_png(tmp_path / "photo.png", height=30, width=50))
    labels = torch.zeros(30, 50, dtype=torch.long)
    labels[:, 35:] = 2  # 30 % sky, 70 % road, no car
    names = ["road", "car", "sky;cloud <b>"]
    result = app.render(encoded, labels, names)
    assert result.labels_path.name == "photo_labels.png" and result.overlay_path.name == "photo_overlay.png"
    saved = Image.open(result.labels_path)
    assert saved.mode == "P" and np.array_equal(np.asarray(saved), labels.numpy())
    overlay = Image.open(result.overlay_path)
    assert overlay.height >= 30 and overlay.width > 50  # the legend is beside the image
    assert result.shares == [("road", 70.0), ("sky;cloud <b>", 30.0)]
    # the legend: largest first, the first synonym, the others in brackets, names escaped, class colours
    html = result.legend_html
    assert html.index("road") < html.index("sky") and "car" not in html
    assert "sky <span" in html and "(cloud &lt;b&gt;)" in html and "<b>" not in html
    assert "70.0%" in html and "30.0%" in html
    r, g, b = class_colours(3)[2]
    assert f"background:rgb({r},{g},{b})" in html


def test_old_result_folders_are_removed(app, tmp_path):
    encoded = app.encode(_png(tmp_path / "a.png", height=8, width=8))
    app.keep_results = 2
    labels = torch.zeros(8, 8, dtype=torch.long)
    paths = [app.render(encoded, labels, ["x"]).labels_path for _ in range(4)]
    assert [p.exists() for p in paths] == [False, False, True, True]


def test_legend_html_and_class_parsing():
    assert parse_classes("road, car ,sky;cloud") == ["road", "car", "sky;cloud"]
    assert parse_classes(["a", "b"]) == ["a", "b"]
    assert legend_html([], ["a"]).count("<tr>") == 1  # the header only


# --------------------------------------------------------------------------- run
def test_a_second_run_with_other_classes_reuses_the_features(app, small_encoders, tmp_path, monkeypatch):
    calls = _count_network_calls(small_encoders, monkeypatch)
    path = _png(tmp_path / "a.png")
    stages = []
    first = app.run(path, "road, car", "LPOSS+", on_stage=stages.append)
    assert stages == app.stage_order("LPOSS+") == ["preprocess", "vlm", "vm", "text", "patch propagation",
                                                   "pixel propagation", "render"]
    assert first.status.startswith("Result 1: LPOSS+ in ")
    assert "image encoded now" in first.status and "Networks ran 1 time(s)" in first.status
    stages.clear()
    second = app.run(path, "tree, water, grass", "LPOSS", {"k": 5}, on_stage=stages.append)
    assert stages == ["text", "patch propagation", "render"]  # no network stage
    assert "re-used the encoded image" in second.status and "Networks ran 1 time(s)" in second.status
    assert calls == {"vlm": 1, "vm": 1} and app.encode_count == 1
    assert {name for name, _ in second.shares} <= {"tree", "water", "grass"}
    assert second.overlay_path != first.overlay_path and first.overlay_path.exists()
    assert sum(share for _, share in second.shares) == pytest.approx(100.0)


def test_bad_input_is_refused_before_the_networks_run(app, tmp_path, monkeypatch):
    good = _png(tmp_path / "good.png")
    (tmp_path / "notes.png").write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    Image.fromarray(np.zeros((300, 400), dtype=np.uint8)).save(tmp_path / "big.png")
    cases = [
        ((None, "a, b"), "No image"),
        ((tmp_path / "missing.png", "a, b"), "No image"),
        ((tmp_path / "notes.png", "a, b"), "Cannot read notes.png: it is not an image file"),
        ((truncated, "a, b"), "Cannot read truncated.png"),
        ((good, ""), "No class names"),
        ((good, " , "), "No class names"),
        ((good, "car, road, car"), "given twice"),
        ((good, "a, , b"), "empty"),
        ((tmp_path / "big.png", "a, b"), "big.png is too large (400 x 300): this demo takes images of at most 0.1"),
    ]
    app.max_pixels = 100_000
    for (image, classes), message in cases:
        with pytest.raises(DemoInputError) as error:
            app.run(image, classes)
        assert message in str(error.value), (message, str(error.value))
        assert str(tmp_path) not in str(error.value)  # the page names the file, not the server's folders
    assert app.encode_count == 0
    # PIL's own decompression-bomb guard (set by `lposs demo` to the same limit) says the same
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(DemoInputError, match="big.png is too large"):
        app.run(tmp_path / "big.png", "a, b")
    assert app.run(good, "a, b").shares  # still serving


def test_the_default_result_folder_goes_with_the_app(small_encoders, tmp_path):
    import gc

    app = DemoApp(*small_encoders, SMALL)
    result = app.run(_png(tmp_path / "a.png", height=8, width=8), "x, y")
    folder = result.labels_path.parent.parent
    assert folder.name.startswith("lposs-demo-") and result.labels_path.exists()
    del app
    gc.collect()
    assert not folder.exists()


def test_demo_app_validates_its_arguments(small_encoders):
    with pytest.raises(ValueError, match="max_pixels must be a positive integer, got 0"):
        DemoApp(*small_encoders, max_pixels=0)
    with pytest.raises(TypeError, match="cache_size must be a positive integer, got float 1.5"):
        DemoApp(*small_encoders, cache_size=1.5)
    with pytest.raises(TypeError, match="VisionEncoder"):
        DemoApp(small_encoders[0], object())


# --------------------------------------------------------------------------- page and command
def test_the_page_has_its_parts_and_is_served_without_the_network(app, monkeypatch):
    gr = pytest.importorskip("gradio", reason='the demo extra is not installed: pip install -e ".[demo]"')
    from segmentation.demo import build_app, launch

    blocks = build_app(app, method="MaskCLIP")
    assert isinstance(blocks, gr.Blocks)
    components = {c.elem_id: c for c in blocks.blocks.values() if getattr(c, "elem_id", None)}
    for elem_id in ("lposs-image", "lposs-classes", "lposs-method", "lposs-run", "lposs-reset", "lposs-overlay",
                    "lposs-legend", "lposs-downloads", "lposs-status"):
        assert elem_id in components, elem_id
    assert components["lposs-method"].value == "MaskCLIP"
    assert type(components["lposs-image"]) is gr.Image  # no subclass: Gradio would write a .pyi beside ours
    assert not list(Path(segmentation.demo.__file__).parent.glob("*.pyi"))
    sliders = [c for c in blocks.blocks.values() if isinstance(c, gr.Slider)]
    assert [s.value for s in sliders] == [30, 0.95, 0.01, 13]

    tried = []  # connections off this machine, from any thread (the autouse guard also refuses them)
    guarded = socket.socket.connect

    def recording_connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            tried.append(address)
        return guarded(self, address)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    _, url, _ = launch(blocks, app, port=_free_port(), block=False)
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert "lposs-run" in answer.read().decode()
        time.sleep(1)
    finally:
        blocks.close(verbose=False)
    assert tried == []


def test_demo_without_gradio_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert cli.main(["demo", "--random-init"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "lposs[demo]"' in err[0] and 'pip install -e ".[demo]"' in err[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--port", "0"], "--port must be in 1..65535"),
        (["demo", "--max-pixels", "0"], "--max-pixels >= 1"),
        (["demo", "--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["demo", "--vlm", "nothing:model"], "unknown encoder 'nothing'"),
    ],
)
def test_demo_bad_options_are_one_line(argv, message, capsys):
    pytest.importorskip("gradio", reason='the demo extra is not installed: pip install -e ".[demo]"')
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_demo_command_serves_its_page_on_loopback(tmp_path):
    """``lposs demo --random-init`` (the published architectures, random weights) in a fresh process:
    it serves the page on 127.0.0.1, and Ctrl+C stops it cleanly."""
    pytest.importorskip("gradio", reason='the demo extra is not installed: pip install -e ".[demo]"')
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LPOSS_CACHE_DIR": str(tmp_path / "cache"),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    server = subprocess.Popen(
        [sys.executable, "-m", "segmentation.cli", "demo", "--random-init", "--device", "cpu", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(server.stdout), daemon=True)
    reader.start()
    try:
        deadline, page = time.monotonic() + 240, None
        while time.monotonic() < deadline and server.poll() is None and not (page and out):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    page = answer.read().decode()
            except OSError:
                pass
            time.sleep(0.2)
        assert page is not None, f"the page never answered; exit status {server.poll()}"
        assert "lposs-run" in page and "LPOSS demo" in page  # the page's configuration is in the HTML
        assert out and re.fullmatch(rf"lposs demo: open http://127\.0\.0\.1:{port}/? in a browser \(Ctrl\+C stops the "
                                    r"server\)\n", out[0]), out
    finally:
        server.send_signal(signal.SIGINT)
        try:
            _, err = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    assert server.returncode == 0, err
    assert "random weights" in err and "Traceback" not in err


def test_a_busy_port_is_one_line_and_nonzero(tiny_clip_configs, capsys, monkeypatch):
    pytest.importorskip("gradio", reason='the demo extra is not installed: pip install -e ".[demo]"')
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # run_demo sets it; restore after
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = cli.main(["demo", "--random-init", "--device", "cpu", "--port", str(port),
                           "--vlm", f"open_clip:{tiny_clip_configs[0]}", "--vm", "timm:vit_tiny_patch16_224"])
    assert status == 2
    assert Image.MAX_IMAGE_PIXELS == 20_000_000  # PIL's guard follows --max-pixels
    err = capsys.readouterr().err.strip().splitlines()
    assert "random weights" in err[0] and len(err) == 2
    assert err[1].startswith(f"lposs demo: error: cannot serve on 127.0.0.1:{port}"), err


def test_overlay_legend_holds_every_name_whole():
    """The legend beside the overlay is as wide as its longest line, wherever that line is (here the
    last: its class has the fewest pixels): the text's rightmost ink stays inside the picture with a
    margin (the clipped legend of the first demo), the longest line is drawn whole, one line per class."""
    from segmentation.render import _legend_font, _legend_text, overlay_image

    names = ["sky", "road", "a rather long class name for the legend;its synonym"]
    labels = torch.zeros(60, 90, dtype=torch.long)
    labels[20:, :] = 1
    labels[55:, :] = 2
    canvas = np.asarray(overlay_image(np.full((60, 90, 3), 128, dtype=np.uint8), labels, names))
    size = max(10, round(90 / 60))
    swatch, gap = size, round(0.6 * size)
    text = canvas[:, 90 + gap + swatch + gap:]  # the legend's text column, right of the swatches
    ink = (text < 100).all(axis=2)  # black text on white
    columns = np.flatnonzero(ink.any(axis=0))
    assert columns.max() < text.shape[1] - gap // 2  # a white margin at the right edge
    counts = torch.bincount(labels.reshape(-1), minlength=3).tolist()
    font = _legend_font(size)
    lengths = [font.getlength(_legend_text(n, c, labels.numel())) for n, c in zip(names, counts, strict=True)]
    assert lengths[2] > 2 * max(lengths[:2])  # the long name is the longest line by far
    assert columns.max() + 1 >= 0.95 * lengths[2]  # and it is drawn whole, not cut
    rows = np.flatnonzero(ink.any(axis=1))
    assert len(np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)) == 3  # one line per class present
