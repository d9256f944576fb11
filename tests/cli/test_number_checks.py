"""Numbers that cannot mean anything are refused before any model loads (issue 17): non-finite guidance, frame
rates and LoRA multipliers, sizes, frame counts and segments past their bounds, seeds that jax.random.key cannot
take. A negative guidance scale runs, with a warning."""

import logging
import re

import numpy as np
import PIL.Image
import pytest

from longcat_jax import generate
from longcat_jax.errors import InputError
from longcat_jax.models.dit.lora import parse_lora_spec
from longcat_jax.pipelines import tasks
from longcat_jax.pipelines.request import MAX_SEED, SEED_HEADROOM
from longcat_jax.pipelines.tasks import plan_run
from longcat_jax.seeds import key_from_seed

SMALL = ("--height", "64", "--width", "64", "--num-frames", "5")



@pytest.fixture(autouse=True)
def _no_model_load(monkeypatch):
    """Every case here is refused by the plan: a model load would mean it was not."""

    def never(*_args, **_kwargs):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(generate, "run_plan", never)


def _plan(*argv: str):
    return plan_run(generate.parse_request(list(argv)))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--guidance-scale", "inf"], "--guidance-scale must be a finite number, got inf"),
        (["--guidance-scale", "nan"], "--guidance-scale must be a finite number, got nan"),
        (["--guidance-scale=-inf"], "--guidance-scale must be a finite number, got -inf"),
        (["--fps", "inf"], "--fps must be a finite number, got inf"),
        (["--fps", "nan"], "--fps must be a finite number, got nan"),
        (["--fps", "-3"], "--fps must be positive, got -3.0"),
        (["--fps", "1000"], "--fps 1000.0 is past its bound of 240.0"),
        (["--task", "long", "--num-cond-frames", "3"], "--num-cond-frames must be 1 + 4k (the VAE encodes such "
                                                       "counts), got 3; try 1 (the default is 5)"),
        (["--height", "100000"], "--height 100000 is past its bound of 4096; use at most 4096"),
        (["--width", "4112"], "--width 4112 is past its bound of 4096"),
        (["--num-frames", "100000"], "--num-frames 100000 is past its bound of 1025; use at most 1025; longer videos"),
        (["--task", "long", "--num-segments", "100000"], "--num-segments 100000 is past its bound of 1000"),
        (["--num-inference-steps", "100000"], "--num-inference-steps 100000 is past its bound of 1000"),
        (["--seed", str(2**70)], f"--seed must be in 0..{MAX_SEED}"),
        (["--seed", str(2**63 - 1)], f"--seed must be in 0..{MAX_SEED}"),
        (["--seed", "-1"], f"--seed must be in 0..{MAX_SEED}"),
        (["--refine", "--refine-height", "128"], "give --refine-height and --refine-width together"),
        (["--refine", "--refine-height", "0", "--refine-width", "128"], "--refine-height must be positive"),
        (["--refine", "--refine-height", "96", "--refine-width", "128"], "multiples of 64"),
    ],
)
def test_meaningless_numbers_are_refused_before_any_model(argv, message, caplog):
    with pytest.raises(InputError, match=re.escape(message)):
        _plan(*SMALL, *argv)  # argv last: its flags win
    with caplog.at_level(logging.ERROR):
        assert generate.main([*SMALL, *argv]) == 2
    assert message in caplog.text


def test_the_largest_seed_works_for_every_derived_seed():
    """MAX_SEED plus the headroom every later stage adds is a seed key_from_seed takes."""
    key_from_seed(MAX_SEED + SEED_HEADROOM)
    plan = _plan("--seed", str(MAX_SEED), "--refine", *SMALL)
    assert plan.stages.refinement.seed <= MAX_SEED + SEED_HEADROOM


@pytest.mark.parametrize("multiplier", ["nan", "inf", "-inf"])
def test_a_lora_multiplier_must_be_finite(tmp_path, multiplier):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    with pytest.raises(InputError, match=f"LoRA multiplier {multiplier} in --lora .* is not a finite number"):
        parse_lora_spec(f"{lora}:{multiplier}")
    with pytest.raises(InputError, match="not a finite number"):
        _plan("--lora", f"{lora}:{multiplier}", *SMALL)
    assert parse_lora_spec(f"{lora}:0.5") == (lora, 0.5)


@pytest.mark.parametrize("scale", ["-2", "0.5"])
def test_a_guidance_scale_below_one_runs_unguided_with_a_warning(caplog, scale):
    with caplog.at_level(logging.WARNING):
        plan = _plan("--guidance-scale", scale, *SMALL)
    assert f"--guidance-scale {scale} is below 1, which turns guidance off" in caplog.text
    assert not plan.stages.generation.sampling.guided


@pytest.mark.parametrize("argv, why", [
    (("--guidance-scale", "1"), "--guidance-scale 1"),
    (("--distill",), "--distill's default guidance 1"),
])
def test_a_negative_prompt_in_an_unguided_run_is_warned_of(caplog, argv, why):
    with caplog.at_level(logging.WARNING):
        plan = _plan("--negative-prompt", "blurry", *argv, *SMALL)
    assert f"--negative-prompt is read only by guided runs (--guidance-scale above 1), and this one is unguided ({why})" \
        in caplog.text
    assert plan.stages.generation.sampling.negative_prompt is None
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _plan("--negative-prompt", "blurry", "--guidance-scale", "4", *SMALL)
        _plan("--negative-prompt", "", "--guidance-scale", "1", *SMALL)  # '' asks for none: nothing to warn of
    assert "--negative-prompt" not in caplog.text


def test_a_video_too_large_for_memory_is_refused(monkeypatch, tmp_path):
    """The frames are held in memory until written: a long video past the machine's memory is refused."""
    monkeypatch.setattr(tasks.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 50}[name])
    with pytest.raises(InputError, match=r"the video would be 21 frames of 64x64, 258\.0 KB held in memory until "
                                         r"written, and this machine has 204\.8 KB; make fewer frames"):
        _plan("--task", "long", "--num-segments", "4", "--num-cond-frames", "1", *SMALL)
    image = tmp_path / "large.png"
    PIL.Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(image)
    with pytest.raises(InputError, match=r"a smaller size \(the input's size: --output-size generated writes the "):
        _plan("--task", "i2v", "--image", str(image), "--num-frames", "5")
