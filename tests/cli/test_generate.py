"""The CLI: a real mp4 from no arguments, a run on a checkpoint folder, and every refusal before compute."""

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from longcat_jax import generate
from longcat_jax.errors import CheckpointError, InputError
from longcat_jax.models.dit import config as dit_config_module
from longcat_jax.pipelines.tasks import RunPlan, plan_run
from longcat_jax.presets import DEFAULT_NEGATIVE_PROMPT
from longcat_jax.video_io import read_video, write_mp4
from tests.helpers.fixture_checkpoint import link_fixture_checkpoint

BALANCED = str(Path(__file__).resolve().parents[2] / "configs" / "bsa" / "config_720p_balanced.json")



def _plan(*argv: str) -> RunPlan:
    return plan_run(generate.parse_request(list(argv)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fixtures_dir) -> Path:
    """A checkpoint folder laid out like the download: the fixture parts, a tokenizer and a cfg_step_lora."""
    return link_fixture_checkpoint(tmp_path_factory.mktemp("checkpoint"), fixtures_dir)


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "clip.mp4"
    frames = np.random.default_rng(0).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    return write_mp4(path, frames, fps=15)


def test_no_arguments_writes_an_mp4_of_the_builtin_model(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert generate.main([]) == 0
    assert "RANDOM weights" in caplog.text
    frames, fps = read_video(tmp_path / "outputs" / "longcat_t2v.mp4")
    assert frames.shape == (13, 128, 208, 3) and fps == 15.0


def test_checkpoint_folder_distilled_run(checkpoint, tmp_path, monkeypatch):
    output = tmp_path / "distilled.mp4"
    argv = ["--model-path", str(checkpoint), "--distill", "--height", "64", "--width", "64", "--num-frames", "5",
            "--num-inference-steps", "2", "--dtype", "float32", "--output-path", str(output)]
    reads = []
    read_json_object = dit_config_module.read_json_object

    def counted(path, *args, **kwargs):
        reads.append(path)
        return read_json_object(path, *args, **kwargs)

    monkeypatch.setattr(dit_config_module, "read_json_object", counted)
    assert generate.main(argv) == 0
    assert reads == [checkpoint / "dit" / "config.json"]  # dit/config.json is read once per run
    frames, fps = read_video(output)
    assert frames.shape == (5, 64, 64, 3) and fps == 15.0


def test_npz_output_and_a_context_parallel_run_equal_to_it(tmp_path):
    """An npz output (frames and fps), and the CLI over 2 of the test's 8 CPU devices giving the frames of the
    one-device run (one test: the one-device run is both)."""
    import jax

    if jax.device_count() < 2:
        pytest.skip("needs several devices (tests/conftest.py asks XLA for 8 CPU devices)")
    frames = {}
    for n in (1, 2):
        output = tmp_path / f"cp{n}.npz"
        argv = ["--height", "64", "--width", "64", "--num-frames", "5", "--num-inference-steps", "2",
                "--output-format", "npz", "--output-path", str(output), "--context-parallel", str(n)]
        assert generate.main(argv) == 0
        with np.load(output) as data:
            assert data["frames"].shape == (5, 64, 64, 3) and data["frames"].dtype == np.uint8
            assert float(data["fps"]) == 15.0
            frames[n] = data["frames"].astype(np.int16)
    assert np.abs(frames[1] - frames[2]).max() <= 1


def test_context_parallel_beyond_the_devices_is_refused(caplog):
    import jax

    assert generate.main(["--context-parallel", str(jax.device_count() + 1)]) == 2
    assert "device" in caplog.text


def test_interrupted_run_leaves_no_output(tmp_path, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "run_plan", interrupted)
    output = tmp_path / "never.mp4"
    assert generate.main(["--output-path", str(output)]) == 130
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_frame_count_is_rounded_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        plan = _plan("--num-frames", "10")
    assert plan.stages.generation.num_frames == 9
    assert "rounding 10 frames to 9" in caplog.text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--height", "100"], "multiples of 16"),
        (["--task", "i2v"], "needs --image"),
        (["--task", "i2v", "--image", "/no/such/image.png"], "not found"),
        (["--task", "continuation"], "needs --video"),
        (["--task", "continuation", "--video", "/no/such/video.mp4"], "not found"),
        (["--task", "refine"], "needs --refine-from"),
        (["--refine-from", "/no/such/video.mp4"], "not found"),
        (["--refine-from", "a.mp4", "--image", "b.png", "--video", "c.mp4"], "not both"),
        (["--image", "b.png"], "--image is read by --task i2v or refine, not by --task t2v"),
        (["--task", "i2v", "--image", "b.png", "--video", "c.mp4"], "--video is read by --task continuation"),
        (["--task", "long", "--num-segments", "-1"], "--num-segments must be 0 or more"),
        (["--fps", "0"], "--fps must be positive, got 0.0"),
        (["--num-inference-steps", "0"], "--num-inference-steps must be positive"),
        (["--num-frames", "-7"], "--num-frames must be positive"),
        (["--refine", "--refine-inference-steps", "0"], "--refine-inference-steps must be positive"),
        (["--lora", "/no/such/lora.safetensors:0.5"], "LoRA /no/such/lora.safetensors not found"),
        (["--model-path", "/no/such/folder"], "not found"),
    ],
)
def test_refusals(argv, message, caplog):
    with caplog.at_level(logging.ERROR):
        assert generate.main(argv) == 2
    assert message in caplog.text


def test_refine_size_must_be_a_multiple_of_64(small_video):
    with pytest.raises(InputError, match="multiples of 64"):
        _plan("--refine-from", str(small_video), "--height", "96", "--width", "128")
    assert _plan("--refine-from", str(small_video), "--height", "128", "--width", "128").task.name == "refine"


def test_continuation_video_too_short(small_video):
    with pytest.raises(InputError, match="at least 13"):
        _plan("--task", "continuation", "--video", str(small_video), "--num-cond-frames", "13", "--num-frames", "17")


def test_checkpoint_missing_parts_are_named(checkpoint, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "dit").symlink_to(checkpoint / "dit")
    with pytest.raises(CheckpointError, match="lacks vae, text_encoder, tokenizer"):
        _plan("--model-path", str(partial))
    with pytest.raises(CheckpointError, match="lora/refinement_lora.safetensors"):
        _plan("--model-path", str(checkpoint), "--refine")


@pytest.mark.slow
def test_refine_from_video_with_a_condition_video(small_video, tmp_path):
    """The refine task with a condition video, on a quantized DiT whose attention, block-sparse in the refinement, runs
    in FP8 (`--quantize fp8-attention`: the FP8 BSA forward's emulation on the CPU); tests/cli/test_quantized_tasks.py
    runs the other tasks quantized."""
    output = tmp_path / "refined.mp4"
    argv = ["--refine-from", str(small_video), "--video", str(small_video), "--num-cond-frames", "1",
            "--height", "64", "--width", "64", "--refine-inference-steps", "2", "--quantize", "fp8-attention",
            "--output-path", str(output)]
    assert _plan(*argv).stages.output_shape == (18, 64, 64)
    assert generate.main(argv) == 0
    frames, fps = read_video(output)
    assert frames.shape == (18, 64, 64, 3) and fps == 30.0  # frames doubled, 30 fps


def test_refine_input_at_30_fps_is_taken_at_15(tmp_path, caplog):
    frames = np.random.default_rng(1).integers(0, 256, (18, 64, 64, 3), dtype=np.uint8)
    fast, slow = write_mp4(tmp_path / "fast.mp4", frames, fps=30), write_mp4(tmp_path / "slow.mp4", frames, fps=5)
    inputs = _plan("--refine-from", str(fast), "--video", str(fast), "--height", "64", "--width", "64").setup.inputs
    assert len(inputs.stage1) == 9  # every second frame: the refinement doubles 15 fps to 30
    assert len(inputs.refine_video) == 18  # the condition frames are taken at the refined 30 fps
    with caplog.at_level(logging.WARNING):
        inputs = _plan("--refine-from", str(slow), "--height", "64", "--width", "64").setup.inputs
    assert len(inputs.stage1) == 54 and "slow.mp4" not in caplog.text  # each frame thrice: 5 fps taken at 15


def test_the_default_negative_prompt_is_the_original_demos(checkpoint):
    """Issue 18: the original's demos pass this negative prompt; '' gives none; an unguided run encodes none."""
    def negative(*argv):
        return _plan("--model-path", str(checkpoint), *argv).stages.generation.sampling.negative_prompt

    assert DEFAULT_NEGATIVE_PROMPT.startswith("Bright tones, overexposed, static, blurred details, subtitles, style")
    assert DEFAULT_NEGATIVE_PROMPT.endswith("many people in the background, walking backwards")
    assert negative() == DEFAULT_NEGATIVE_PROMPT
    assert negative("--negative-prompt", "") == ""
    assert negative("--negative-prompt", "blurry") == "blurry"
    assert negative("--distill") is None


def test_seed_help_shows_its_default():
    assert re.search(r"--seed SEED\s+noise seed.*\(default\s+42\)", " ".join(generate.build_parser().format_help().split()))
