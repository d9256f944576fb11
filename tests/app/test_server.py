"""The served page without a browser (Gradio in this process, on the built-in model): files come only from the
output folder. A result there is served; a file outside it, a path that climbs out of it, a symbolic link that
points out of it and a URL are refused by the app's own guard (`confine.OutputFolderOnly`) before Gradio sees
them. Skipped without Gradio, which is imported by the `server` fixture rather than at collection (its import takes
seconds, paid then only by the xdist worker that runs these tests)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from longcat_jax.app.engine import AppSettings, Engine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> tuple[str, Path]:
    """The page on a free localhost port, as `python -m longcat_jax.app` serves it: (its URL, the output folder)."""
    pytest.importorskip("gradio")
    from longcat_jax.app.ui import build_app, serve

    folder = tmp_path_factory.mktemp("served")
    output_dir = folder / "outputs"
    output_dir.mkdir()
    engine = Engine(AppSettings(model_path=None, output_dir=output_dir, context_parallel=1))
    engine.warm_up()
    app = build_app(engine)
    port = _free_port()
    serve(app, host="127.0.0.1", port=port, output_dir=output_dir, max_upload_mb=1, block=False)
    try:
        yield f"http://127.0.0.1:{port}", output_dir
    finally:
        app.close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _refusal() -> tuple[int, bytes]:
    """The app's guard's answer to a refused file (`confine` imports starlette, Gradio's: after the fixture's skip)."""
    from longcat_jax.app.confine import REFUSAL

    return 403, REFUSAL.encode()


def _file_url(base: str, target: str, form: str = "=") -> str:
    return f"{base}/gradio_api/file{form}{urllib.parse.quote(target)}"


def test_a_file_in_the_output_folder_is_served(server):
    base, output_dir = server
    result = output_dir / "result.json"
    result.write_text('{"seed": 42}')
    assert _get(_file_url(base, str(result))) == (200, b'{"seed": 42}')


@pytest.mark.parametrize("form", ["=", "/"])
def test_files_outside_the_output_folder_are_refused(server, form):
    base, output_dir = server
    secret = output_dir.parent / "secret.txt"
    secret.write_text("not for the page")
    link = output_dir / "link.txt"
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    for target in (str(secret), f"{output_dir}/../secret.txt", str(link), "/etc/hostname"):
        assert _get(_file_url(base, target, form)) == _refusal(), target


def test_a_url_is_not_fetched(server):
    base, _ = server
    for url in ("https://example.com/video.mp4", "http://127.0.0.1:1/x.png", "file:///etc/hostname"):
        assert _get(_file_url(base, url)) == _refusal(), url


def test_the_page_is_served(server):
    status, body = _get(server[0] + "/")
    assert status == 200 and b"LongCat-Video (JAX)" in body
