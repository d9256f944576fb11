"""SIGTERM (timeout, docker stop, Slurm) ends a run as Ctrl-C does (issue 17): exit status 143, one line, no
output and no temporary file left behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from longcat_jax.signals import Terminated, sigterm_as_interrupt
from longcat_jax.video_io import write_mp4
from tests.helpers.xla_flags import subprocess_xla_flags

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_during_denoising_ends_the_cli_like_ctrl_c(tmp_path):
    output = tmp_path / "clip.mp4"
    env = {**os.environ, "XLA_FLAGS": subprocess_xla_flags()}  # one CPU device: a quick start
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "longcat_jax.generate", "--height", "64", "--width", "64", "--num-frames", "5",
               "--num-inference-steps", "1000", "--output-path", str(output)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 300
    try:
        while b"t2v denoising" not in seen:  # the progress bar of the sampling loop: the run is under way
            chunk = process.stderr.read1(4096)
            assert chunk and time.monotonic() < deadline, seen.decode(errors="replace")
            seen += chunk
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    log = (seen + rest).decode(errors="replace")
    assert process.returncode == 143, log
    assert log.strip().splitlines()[-1].endswith("ERROR longcat_jax.generate: terminated (SIGTERM); no output was written")
    assert "Traceback" not in log
    assert list(tmp_path.iterdir()) == []


def test_sigterm_while_writing_leaves_no_partial_file(tmp_path):
    frames = np.zeros((6, 16, 16, 3), np.uint8)

    def frames_then_sigterm():
        yield from frames[:3]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises in this frame before the sleep is over
        yield from frames[3:]

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_as_interrupt():
        write_mp4(tmp_path / "clip.mp4", frames_then_sigterm(), fps=15)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
