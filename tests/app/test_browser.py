"""The app in a real browser: `python -m longcat_jax.app` on the built-in model in a subprocess, driven by
Playwright in Debian's headless Chromium. A t2v run from the page plays in a video element (its file served and
its metadata read) with its settings and timing summary, and enters the gallery; a bad size shows the CLI's
message; an i2v run from an uploaded PNG works, and its result is refined. Screenshots are saved to
LONGCAT_TEST_ARTIFACTS when set (else the test's temporary folder): `app.png`, the page after the t2v run (the
README's, at most `SCREENSHOT_MAX_BYTES`), and `app-finished.png`, the page at the end. Skipped where Gradio,
Playwright or Chromium are missing."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    # looked up, not imported: the app imports Gradio in its own process, and importing it here would cost every
    # xdist worker seconds at collection
    pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs Gradio (pip install -e '.[app]')"),
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)"),
]

START_TIMEOUT = 180  # s: JAX and Gradio imports, the built-in model, on a loaded 2-core CI machine
RUN_TIMEOUT_MS = 180_000  # the first run of a shape compiles
SCREENSHOT_MAX_BYTES = 300_000
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> tuple[str, Path]:
    """The app on a free localhost port: (its URL, its log file); stopped after the module."""
    folder = tmp_path_factory.mktemp("app")
    port = _free_port()
    log = (folder / "app.log").open("w")
    command = [sys.executable, "-m", "longcat_jax.app", "--port", str(port), "--output-dir", str(folder / "outputs"),
               "--context-parallel", "1", "--compilation-cache", "none"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            assert server.poll() is None, f"the app exited:\n{(folder / 'app.log').read_text()}"
            assert time.monotonic() < deadline, f"the app did not start:\n{(folder / 'app.log').read_text()}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url, folder / "app.log"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def page(app):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(app[0])
        page.wait_for_selector("#submit")
        yield page
        browser.close()


def _save_screenshot(page, path: Path) -> None:
    """The whole page as a PNG of at most SCREENSHOT_MAX_BYTES (its colours reduced to a palette as needed: the
    built-in model's videos are noise, which compresses badly), small enough to ship in the repository."""
    from PIL import Image

    page.screenshot(path=str(path), full_page=True)
    for colors in (256, 128, 64, 32):
        if path.stat().st_size <= SCREENSHOT_MAX_BYTES:
            return
        with Image.open(path) as image:
            reduced = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        reduced.save(path, optimize=True)
    assert path.stat().st_size <= SCREENSHOT_MAX_BYTES, f"{path} is {path.stat().st_size} bytes"


def _gallery_size(page) -> int:
    return page.locator("#gallery .thumbnail-item").count()


def _wait_done(page, task: str, gallery_size: int) -> None:
    """Waits until the page's job of `task` is done and the gallery holds `gallery_size` entries; fails at once
    when the error box shows a message instead."""
    page.wait_for_function(
        f"""() => document.querySelector('#error').innerText.includes('rror')
            || (document.querySelector('#status').innerText.includes('{task} is done')
                && document.querySelectorAll('#gallery .thumbnail-item').length >= {gallery_size})""",
        timeout=RUN_TIMEOUT_MS)
    assert "rror" not in page.locator("#error").inner_text()  # neither "Error:" nor "Internal error"
    assert _gallery_size(page) == gallery_size


def test_t2v_bad_input_i2v_and_refine_from_the_page(app, page, tmp_path):
    artifacts = Path(os.environ.get("LONGCAT_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        _drive(page, tmp_path, artifacts)
    except (AssertionError, sync_api.Error) as err:  # the server's side of the story with the browser's
        tail = "\n".join(app[1].read_text().splitlines()[-40:])
        raise AssertionError(f"{err}\npage error box: {page.locator('#error').inner_text()!r}\n"
                             f"--- app log ---\n{tail}") from err
    page.screenshot(path=str(artifacts / "app-finished.png"), full_page=True)


def _drive(page, tmp_path: Path, artifacts: Path) -> None:
    # t2v, the smallest run: a playable video, its settings and summary, and one gallery entry
    page.locator("#prompt textarea").fill("A cat walks slowly across a sunny kitchen floor")
    page.locator("#steps input").fill("2")
    page.locator("#num-frames input").fill("5")
    page.click("#submit")
    _wait_done(page, "t2v", 1)
    page.wait_for_selector("#result-video video")
    # the browser fetched the file (served from the output folder) and read its metadata: it can play it
    page.wait_for_function("document.querySelector('#result-video video').readyState >= 1", timeout=30_000)
    assert page.locator("#result-video video").evaluate("video => video.duration") > 0
    page.wait_for_selector("#settings td:has-text('t2v')")
    assert "2 steps" in page.locator("#settings").inner_text()
    assert "t2v denoising" in page.locator("#summary").inner_text()
    _save_screenshot(page, artifacts / "app.png")

    # a size the model cannot take: the CLI's message in the page, and nothing queued
    page.locator("#size input").click()
    page.get_by_role("option", name="custom").click()
    page.get_by_label("Height (custom size").fill("100")
    page.get_by_label("Width (custom size)").fill("64")
    page.click("#submit")
    page.wait_for_selector("#error:has-text('height and width must be positive multiples of 16, got 100x64')")
    assert _gallery_size(page) == 1

    # i2v from an uploaded PNG
    import imageio.v3 as iio

    image = tmp_path / "first_frame.png"
    iio.imwrite(image, np.full((96, 160, 3), 200, np.uint8))
    page.get_by_label("Image to video").check()
    page.locator("#image input[type=file]").set_input_files(str(image))
    page.wait_for_selector("#image img")
    page.click("#submit")
    page.wait_for_selector("#error:not(:has-text('multiples of 16'))", state="attached")  # a good request clears it
    _wait_done(page, "i2v", 2)

    # the result shown (the i2v video) refined: the button fills in the refine task and its input
    page.click("#refine-result")
    page.wait_for_selector("#refine-from video")
    page.get_by_label("Refinement steps").fill("2")
    page.get_by_label("Refinement height").fill("64")  # small: the refinement encodes and decodes on the CPU
    page.get_by_label("Refinement width").fill("128")
    page.click("#submit")
    _wait_done(page, "refine", 3)
    assert page.get_by_label("Refine a video").is_checked()


def test_a_second_request_queues_and_both_cancel(app, page):
    """A long job runs; the same request again queues behind it; cancelling the queued one, then the running one,
    leaves both cancelled, with no file and no gallery entry."""
    try:
        _drive_cancel(page, app[1].parent / "outputs")
    except (AssertionError, sync_api.Error) as err:
        tail = "\n".join(app[1].read_text().splitlines()[-40:])
        raise AssertionError(f"{err}\n--- app log ---\n{tail}") from err


def _drive_cancel(page, outputs: Path) -> None:
    page.locator("#steps input").fill("1000")  # long enough to be cancelled while it runs, even on a fast machine
    page.locator("#num-frames input").fill("45")
    page.click("#submit")
    page.wait_for_selector("#status:has-text('is running')", timeout=RUN_TIMEOUT_MS)
    running = re.search(r"Job (\S+) is running", page.locator("#status").inner_text()).group(1)
    before = _gallery_size(page)  # the page has polled the engine by now
    page.click("#submit")
    page.wait_for_selector("#status:has-text('is queued at position 1')")
    queued = re.search(r"Job (\S+) is queued", page.locator("#status").inner_text()).group(1)
    assert queued != running

    # the newest active job is the one the cancel field offers first
    _wait_cancel_field(page, queued)
    page.click("#cancel")
    page.wait_for_selector(f"#status:has-text('{queued} was cancelled')")
    _wait_cancel_field(page, running)
    page.click("#cancel")
    page.wait_for_function("(document.querySelector('#queue').textContent.match(/cancelled/g) || []).length == 2",
                           timeout=RUN_TIMEOUT_MS)  # both rows of the queue table (the earlier jobs are done)
    assert _gallery_size(page) == before
    assert not [path for path in outputs.iterdir() if running in path.name or queued in path.name]


def _wait_cancel_field(page, job_id: str) -> None:
    page.wait_for_function(f"document.querySelector('#cancel-job input').value === '{job_id}'")
