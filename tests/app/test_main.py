"""`python -m longcat_jax.app` without Gradio says how to install it, nothing but the page imports Gradio, it
binds to 127.0.0.1 unless told otherwise, and a --port it cannot serve on is refused before the models load."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from longcat_jax.app import __main__ as app_main
from longcat_jax.app.engine import Engine


def test_without_gradio_the_app_names_the_install_command(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # importlib then finds no gradio
    with caplog.at_level(logging.ERROR):
        assert app_main.main(["--output-dir", str(tmp_path), "--port", str(_free_port())]) == 2
    assert "pip install -e '.[app]'" in caplog.text


def test_only_the_page_imports_gradio():
    code = ("import sys, longcat_jax.generate, longcat_jax.app.__main__, longcat_jax.app.engine, longcat_jax.app.form, "
            "longcat_jax.app.views; assert 'gradio' not in sys.modules, 'gradio imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_it_binds_to_this_machine_only_by_default():
    args = app_main.build_parser().parse_args([])
    assert (args.host, args.port, args.output_dir) == ("127.0.0.1", 7860, Path("outputs/app"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_warm_up(monkeypatch):
    monkeypatch.setattr(Engine, "warm_up", lambda self: pytest.fail("the models were loaded"))


def test_a_port_out_of_range_is_refused_before_the_models_load(no_warm_up, caplog, tmp_path):
    with caplog.at_level(logging.ERROR):
        assert app_main.main(["--port", "99999", "--output-dir", str(tmp_path)]) == 2
    assert "--port 99999 is not a TCP port; give one in 1..65535" in caplog.text


def test_a_port_in_use_is_refused_before_the_models_load(no_warm_up, caplog, tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert app_main.main(["--port", str(port), "--output-dir", str(tmp_path)]) == 2
    assert f"cannot serve on 127.0.0.1:{port} (Address already in use); pick another --port" in caplog.text
    app_main.check_address("127.0.0.1", port)  # released: free again once its server is gone


def test_a_host_that_is_not_this_machines_is_refused(no_warm_up, caplog, tmp_path):
    with caplog.at_level(logging.ERROR):
        assert app_main.main(["--host", "host.invalid", "--output-dir", str(tmp_path)]) == 2
    assert "cannot serve on host.invalid:7860" in caplog.text and "give a --host of this machine" in caplog.text
