"""``lposs demo`` end to end in headless Chromium (Debian's ``chromium`` driven by Playwright).

The page is served on 127.0.0.1 in this process with small random-weight encoders (the published
architectures are served by ``lposs demo --random-init`` in test_demo.py); the browser uploads an
image, types classes, runs, sees the overlay and legend, changes the classes and sees the result
change while the networks ran once. Without Chromium at /usr/bin/chromium (``LPOSS_TEST_CHROMIUM``
moves it) or without Playwright these tests skip, saying why.

``python tests/test_demo_browser.py docs/demo.png`` retakes the README's screenshot: ``lposs demo
--random-init`` on the shipped example.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("LPOSS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATUS = re.compile(r"Networks ran (\d+) time\(s\)")
RESULT = re.compile(r"Result (\d+):")
# Gradio's queue calls pandas in ways pandas 3 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def _open_page(browser, url: str, outside: list[str]):
    """A page on ``url`` whose requests anywhere else are refused and recorded in ``outside``."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(60_000)

    def only_this_server(route):
        if route.request.url.startswith(url.rstrip("/") + "/") or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(url)
    page.wait_for_selector("#lposs-run")
    return page


def _upload(page, path: Path) -> None:
    """Put ``path`` in the image box and wait until the page shows it (the file's URL ends in its name)."""
    page.set_input_files("#lposs-image input[type=file]", str(path))
    page.wait_for_selector(f"#lposs-image img[src$='/{path.name}']", state="attached")


def _segment(page, classes: str | None = None) -> None:
    """Type the classes (when given), press Segment and wait until the run has finished."""
    if classes is not None:
        page.fill("#lposs-classes textarea", classes)
    before = RESULT.search(page.locator("#lposs-status").inner_text())
    page.click("#lposs-run")
    page.wait_for_function(  # every successful run writes "Result N: ..." with the next N
        "before => { const m = /Result (\\d+):/.exec(document.querySelector('#lposs-status').innerText);"
        " return m !== null && Number(m[1]) > before; }",
        arg=int(before.group(1)) if before else 0)


def _open_settings(page) -> None:
    """Open the Settings accordion and wait until Gradio has finished showing its sliders.

    A closed accordion's children are rendered only when it first opens, and Gradio then sets each
    new child's stored props (its value too) once more, one animation frame after they have all
    mounted (``render_previously_invisible_children`` in Gradio's frontend core). A value typed in
    between is overwritten by the default; that was the flaky ``k = 77``. So: wait until all four
    sliders and the reset button are in the page, then let two animation frames pass (Gradio's
    frame callback, registered before this one, runs first).
    """
    page.get_by_text("Settings (published defaults)").click()
    page.wait_for_function("() => document.querySelectorAll('input[aria-label^=\"number input for\"]').length === 4"
                           " && document.querySelector('#lposs-reset') !== null")
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => done())))")


K_BOX = "number input for k: neighbours per patch"


def _type_number(page, label: str, value: str) -> None:
    """Type ``value`` into the number box ``label`` and check that it still holds two animation frames
    later. Should Gradio's re-render of the settings (see :func:`_open_settings`) come later than that
    function waits and overwrite the value with its stored one, the value is typed again, at most
    three times in all."""
    holds = ("([label, v]) => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() =>"
             " done(document.querySelector(`input[aria-label=\"${label}\"]`).value === v))))")
    box = page.get_by_label(label)
    for _ in range(3):
        box.fill(value)
        box.press("Enter")
        if page.evaluate(holds, [label, value]):
            return
    raise AssertionError(f"the page kept overwriting {label!r}: {value} typed three times did not hold")


def _expect_message(page, text: str) -> None:
    page.get_by_text(text, exact=False).first.wait_for(state="visible")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def playwright_api():
    sync_api = pytest.importorskip("playwright.sync_api", reason='Playwright is missing: pip install -e ".[test]"')
    pytest.importorskip("gradio", reason='Gradio is missing: pip install -e ".[demo]"')
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium not found at {CHROMIUM}: install Debian's chromium (apt-get install chromium) "
                    "to run the browser tests")
    with sync_api.sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright_api):
    browser = _launch_chromium(playwright_api)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def served(small_encoders):
    """(url, DemoApp): the page with small random-weight encoders on a free loopback port."""
    from conftest import SMALL_CONFIG_KWARGS
    from segmentation import LPOSSConfig
    from segmentation.demo import DemoApp, build_app, launch

    pytest.importorskip("gradio", reason='Gradio is missing: pip install -e ".[demo]"')
    vlm, vm = small_encoders
    config = LPOSSConfig(**SMALL_CONFIG_KWARGS)
    app = DemoApp(vlm, vm, config, max_pixels=20_000)
    blocks = build_app(app)
    _, url, _ = launch(blocks, app, port=_free_port(), block=False)
    yield url, app
    blocks.close()


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = {"photo": tmp_path / "photo.png", "big": tmp_path / "big.png", "text": tmp_path / "notes.png"}
    picture = np.zeros((60, 90, 3), dtype=np.uint8)
    picture[:, :45] = (200, 40, 40)
    picture[:, 45:] = (40, 40, 200)
    picture = np.clip(picture + rng.integers(0, 40, picture.shape), 0, 255).astype(np.uint8)
    Image.fromarray(picture).save(paths["photo"])
    Image.fromarray(np.zeros((150, 200, 3), dtype=np.uint8)).save(paths["big"])  # 30,000 pixels > 20,000
    paths["text"].write_text("not an image")
    return paths


# --------------------------------------------------------------------------- tests
def test_upload_segment_then_relabel_without_encoding_again(browser, served, images):
    url, app = served
    outside: list[str] = []
    page = _open_page(browser, url, outside)
    stages = "window.__lposs_stages = new Set(); new MutationObserver(() => document.querySelectorAll(" \
             "'[role=progressbar]').forEach(e => window.__lposs_stages.add(e.getAttribute('aria-label'))))" \
             ".observe(document.body, {subtree: true, childList: true, attributes: true});"
    page.evaluate(stages)
    count = app.encode_count

    _upload(page, images["photo"])
    _segment(page, "road, car, sky;cloud")
    overlay = page.locator("#lposs-overlay img")
    overlay.wait_for(state="visible")
    first_overlay = overlay.get_attribute("src")
    first_legend = page.locator("#lposs-legend .lposs-class").all_inner_texts()
    assert first_legend and set(first_legend) <= {"road", "car", "sky (cloud)"}
    assert page.locator("#lposs-legend .lposs-swatch").count() == len(first_legend)
    assert "%" in page.locator("#lposs-legend").inner_text()
    assert int(STATUS.search(page.locator("#lposs-status").inner_text()).group(1)) == count + 1
    assert "image encoded now" in page.locator("#lposs-status").inner_text()
    downloads = re.sub(r"\s", "", page.locator("#lposs-downloads").inner_text())
    assert "photo_labels.png" in downloads and "photo_overlay.png" in downloads
    assert app.encode_count == count + 1

    _segment(page, "tree, water, grass")
    assert page.locator("#lposs-overlay img").get_attribute("src") != first_overlay
    second_legend = page.locator("#lposs-legend .lposs-class").all_inner_texts()
    assert second_legend and set(second_legend) <= {"tree", "water", "grass"}
    status = page.locator("#lposs-status").inner_text()
    assert "re-used the encoded image" in status
    assert int(STATUS.search(status).group(1)) == count + 1 and app.encode_count == count + 1

    page.get_by_label("MaskCLIP").check()  # another method: still no network pass
    _segment(page)
    assert ": MaskCLIP in" in page.locator("#lposs-status").inner_text()
    assert app.encode_count == count + 1

    seen = page.evaluate("Array.from(window.__lposs_stages)")
    assert any("propagation" in (s or "") or "text embeddings" in (s or "") for s in seen), seen
    assert outside == [], f"the page tried to reach the network: {outside}"
    page.close()


def test_bad_input_shows_a_message_and_the_server_keeps_serving(browser, served, images):
    url, app = served
    outside: list[str] = []
    page = _open_page(browser, url, outside)
    count = app.encode_count
    for image, classes, message in [  # each step: what is uploaded and typed (None: left as it is), the message
        (None, None, "No image: upload one"),
        ("photo", "car, road, car", "given twice"),
        (None, "", "No class names"),
        ("big", "road, car", "big.png is too large (200 x 150)"),
        ("text", None, "Cannot read notes.png: it is not an image file"),
    ]:
        if image is not None:
            _upload(page, images[image])
        if classes is not None:
            page.fill("#lposs-classes textarea", classes)
        page.click("#lposs-run")
        _expect_message(page, message)

    _upload(page, images["photo"])
    _segment(page, "road, car")  # still serving; the photo was encoded by the other test or now
    assert "%" in page.locator("#lposs-legend").inner_text()
    assert app.encode_count <= count + 1
    assert outside == [], f"the page tried to reach the network: {outside}"
    page.close()


def test_reset_restores_the_published_defaults(browser, served):
    url, app = served
    page = _open_page(browser, url, [])
    _open_settings(page)
    _type_number(page, K_BOX, "77")
    read_k = f"v => document.querySelector('input[aria-label=\"{K_BOX}\"]').value === v"
    page.wait_for_timeout(500)  # no late re-render: 77 still holds half a second later, just before the reset
    assert page.evaluate(read_k, "77"), "k was overwritten after it was typed"
    page.click("#lposs-reset")
    page.wait_for_function(read_k, arg="30")  # the app's default (the published one is 400)
    page.close()


# --------------------------------------------------------------------------- the README's screenshot
def take_screenshot(out: Path) -> None:  # pragma: no cover - run by hand
    """Serve ``lposs demo --random-init``, segment the shipped example in headless Chromium, save the page."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "segmentation.cli", "demo", "--random-init", "--device", "cpu",
                               "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = _launch_chromium(playwright)
            page = _open_page(browser, url, [])
            page.set_default_timeout(600_000)  # the published architectures on a CPU: minutes for the first run
            page.set_viewport_size({"width": 1280, "height": 1000})
            page.locator("#lposs-image").scroll_into_view_if_needed()
            page.locator("table tbody tr").filter(has_text="building;temple").first.click()  # the example row
            page.wait_for_selector("#lposs-image img")
            _open_settings(page)
            _segment(page)
            page.locator("#lposs-overlay img").wait_for(state="visible")
            time.sleep(1)
            page.screenshot(path=str(out), full_page=True)
            with Image.open(out) as shot:  # 256 colours: a third of the size, no visible loss
                shot = shot.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
            shot.save(out, optimize=True)
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl+C: a clean stop
        server.wait(timeout=60)


if __name__ == "__main__":  # pragma: no cover
    take_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/demo.png"))
