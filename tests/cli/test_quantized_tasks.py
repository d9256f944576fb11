"""Every task through the CLI on the built-in model with a quantized DiT (issue 22: "the quantized tiny model runs
every task through the CLI"): each generation task with one of the quantization modes; the refine task runs under
fp8-attention in tests/cli/test_generate.py (`test_refine_from_video_with_a_condition_video`), so that together they
cover every task and every mode. The output is a video of the planned shape, and the run's record names the mode.
Four runs of 10-25 s each on a 2-core CPU."""

import json
from pathlib import Path

import numpy as np
import pytest

from longcat_jax import generate
from longcat_jax.pipelines.tasks import plan_run
from longcat_jax.video_io import read_video
from tests.helpers.task_inputs import write_task_inputs

SMALL = ("--height", "64", "--width", "64", "--num-frames", "5", "--num-inference-steps", "2",
         "--refine-inference-steps", "2")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    paths = write_task_inputs(tmp_path_factory.mktemp("inputs"))
    return {"IMAGE": paths["image"], "VIDEO": paths["video"]}


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, argv",
    [
        ("fp8", ("--distill",)),
        ("int8", ("--task", "i2v", "--image", "IMAGE")),
        ("fp8-weight-only", ("--task", "continuation", "--video", "VIDEO", "--num-cond-frames", "1")),
        ("int8", ("--task", "long", "--num-cond-frames", "1", "--num-segments", "2")),
    ],
    ids=["t2v_distilled", "i2v", "continuation", "long"],
)
def test_every_task_runs_quantized(inputs, tmp_path, mode, argv):
    argv = [inputs.get(a, a) for a in argv] + [*SMALL, "--quantize", mode, "--output-path", str(tmp_path / "out.mp4")]
    planned = plan_run(generate.parse_request(argv)).stages.output_shape
    assert generate.main(argv) == 0
    frames, _ = read_video(tmp_path / "out.mp4")
    assert frames.shape == (*planned, 3)
    assert np.ptp(frames) > 0  # not a blank video
    record = json.loads(Path(tmp_path / "out.json").read_text())
    assert record["precision"]["quantize"] == mode
