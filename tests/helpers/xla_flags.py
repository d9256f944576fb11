"""XLA_FLAGS for the tests' subprocesses: the session's (conftest.py) with the host device count of the caller's choosing.

conftest.py asks for 8 host devices and, on a machine without an NVIDIA driver, adds flags that make XLA compile faster
(the tests' programs are compiled far more often than run). A subprocess that replaced XLA_FLAGS wholesale to pick its
device count also dropped those: a two-process mesh test took 24.6 s with LLVM's optimisations, 16.2 s without
(2-core CPU, 2026-12-04).
"""

from __future__ import annotations

import os
import re

_DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=\S*")


def subprocess_xla_flags(device_count: int | None = None) -> str:
    """This session's XLA_FLAGS with `--xla_force_host_platform_device_count` set to `device_count`, or left out (one
    host device, as a user's process has) for None; every other flag is kept."""
    flags = _DEVICE_COUNT.sub("", os.environ.get("XLA_FLAGS", "")).split()
    if device_count is not None:
        flags.insert(0, f"--xla_force_host_platform_device_count={device_count}")
    return " ".join(flags)
