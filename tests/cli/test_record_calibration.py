"""`generate --record-calibration FILE.npz`, then `convert --quantize int8 --calibration FILE.npz`: GPTQ calibrated on
a run's own DiT calls, and the refusals before a run."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from convert.__main__ import main as convert_main
from longcat_jax import generate
from longcat_jax.models.dit import load_dit
from longcat_jax.models.dit.calibration_inputs import CalibrationInputs
from tests.helpers.fixture_checkpoint import link_fixture_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fixtures_dir) -> Path:
    return link_fixture_checkpoint(tmp_path_factory.mktemp("checkpoint"), fixtures_dir)


def test_recorded_calls_calibrate_the_converter(checkpoint, tmp_path):
    record = tmp_path / "calls.npz"
    argv = ["--model-path", str(checkpoint), "--height", "64", "--width", "64", "--num-frames", "5",
            "--num-inference-steps", "3", "--dtype", "float32", "--output-path", str(tmp_path / "out.mp4"),
            "--record-calibration", str(record)]
    assert generate.main(argv) == 0
    calls = CalibrationInputs.load(record)
    # 3 guided steps, each two calls (the negative prompt's branch, then the prompt's) on the same latents.
    assert calls.calls == 6 and calls.latents.shape == (6, 16, 2, 8, 8)
    np.testing.assert_array_equal(calls.latents[0], calls.latents[1])
    assert not np.array_equal(calls.text[0], calls.text[1])
    assert calls.timestep[0] == calls.timestep[1] > calls.timestep[2] == calls.timestep[3] > calls.timestep[4]
    src = tmp_path / "src"
    src.mkdir()
    (src / "dit").symlink_to(checkpoint / "dit", target_is_directory=True)
    assert convert_main([str(src), str(tmp_path / "gptq"), "--quiet", "--allow-incomplete", "--quantize", "int8",
                         "--calibration", str(record)]) == 0
    model = load_dit(tmp_path / "gptq" / "dit", dtype=jnp.float32, quantize="int8")
    assert model.blocks[0].attn.qkv.qkernel.get_value().dtype == jnp.int8


@pytest.mark.parametrize("name, message", [("calls.txt", "writes an .npz file"),
                                           ("missing/calls.npz", "does not exist; create it first")])
def test_a_record_path_that_cannot_be_written_is_refused_before_the_run(tmp_path, caplog, name, message):
    assert generate.main(["--record-calibration", str(tmp_path / name)]) == 2
    assert message in caplog.text
