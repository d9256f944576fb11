"""Logging of the command-line tools (generate, train, app): INFO to stderr with times, libraries quieter."""

from __future__ import annotations

import logging

QUIET_LIBRARIES = ("jax", "absl", "httpx")  # absl: Orbax logs every checkpoint step at INFO; httpx: Gradio's requests


def setup_cli_logging() -> None:
    """INFO to stderr with times. Libraries may have set up the root logger already (absl does, on import of
    orbax): its plain console handlers get our format rather than a second handler."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(formatter)
    root.setLevel(logging.INFO)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
