"""The CLI runs BSA on a token grid that its chunks do not divide (the guide's 720p case, at the built-in model's
size): the grid is padded to whole chunks inside the attention, and the run says so in its BSA log lines."""

import logging
from pathlib import Path

import numpy as np
import pytest

from longcat_jax import generate

BALANCED = str(Path(__file__).resolve().parents[2] / "configs" / "bsa" / "config_720p_balanced.json")


@pytest.mark.slow
def test_t2v_with_bsa_on_a_grid_the_chunks_do_not_divide(tmp_path, caplog):
    # 128x208 pixels, 13 frames: token grid (4, 8, 13), 13 columns against the preset's 4x4x4 chunks
    output = tmp_path / "odd_grid.npz"
    argv = ["--height", "128", "--width", "208", "--num-frames", "13", "--num-inference-steps", "1",
            "--bsa-config", BALANCED, "--output-format", "npz", "--output-path", str(output)]
    with caplog.at_level(logging.INFO, logger="longcat_jax.pipelines.bsa"):
        assert generate.main(argv) == 0
    assert "BSA on for t2v" in caplog.text
    assert "queries (4, 8, 13) -> (4, 8, 16) in (4, 4, 4) chunks (18.8% padding)" in caplog.text
    with np.load(output) as data:
        frames = data["frames"]
    assert frames.shape == (13, 128, 208, 3)
    assert np.all(np.isfinite(frames))
