"""Runs a script of benchmarks/ as a user runs it (benchmarks/ is imported by nothing, tests/test_architecture.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(script: str, *args: str, json_path: Path, timeout: int) -> dict | list:
    """Runs benchmarks/<script> on the CPU with --json json_path; returns the JSON (the output is in the failure)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(json_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(json_path.read_text())
