"""`python -m longcat_jax.app` without Gradio says how to install it, nothing but the page imports Gradio, and it
binds to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from longcat_jax.app import __main__ as app_main


def test_without_gradio_the_app_names_the_install_command(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # importlib then finds no gradio
    with caplog.at_level(logging.ERROR):
        assert app_main.main(["--output-dir", str(tmp_path)]) == 2
    assert "pip install -e '.[app]'" in caplog.text


def test_only_the_page_imports_gradio():
    code = ("import sys, longcat_jax.generate, longcat_jax.app.__main__, longcat_jax.app.engine, longcat_jax.app.form, "
            "longcat_jax.app.views; assert 'gradio' not in sys.modules, 'gradio imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_it_binds_to_this_machine_only_by_default():
    args = app_main.build_parser().parse_args([])
    assert (args.host, args.port, args.output_dir) == ("127.0.0.1", 7860, Path("outputs/app"))
