"""The NaN guard (issue 17): NaN weights or an extreme LoRA multiplier stop the run after the stage that made the
NaN, with the stage's name and the likely causes, exit status 2 and nothing written, where a black video with
exit status 0 came out before."""

import logging

import jax.numpy as jnp
import numpy as np
import pytest

from longcat_jax import generate
from longcat_jax.checkpoint.layout import REFINE_LORA
from longcat_jax.nan_guard import NonFiniteError, check_finite
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.video_io import to_uint8_frames

SMALL = ["--height", "64", "--width", "64", "--num-frames", "5", "--num-inference-steps", "1"]



def _builtin_with(monkeypatch, damage):
    """LongCatPipeline.builtin as the CLI loads it, with `damage(pipe)` applied (a stand-in for a bad checkpoint)."""
    builtin = LongCatPipeline.builtin

    def damaged(cls, *args, **kwargs):
        pipe = builtin(*args, **kwargs)
        damage(pipe)
        return pipe

    monkeypatch.setattr(LongCatPipeline, "builtin", classmethod(damaged))


def _one_nan_weight(pipe):
    kernel = pipe.dit.blocks[0].attn.proj.kernel
    kernel[...] = kernel[...].at[0, 0].set(jnp.nan)


def test_a_nan_weight_in_the_dit_stops_the_run(tmp_path, monkeypatch, caplog):
    _builtin_with(monkeypatch, _one_nan_weight)
    output = tmp_path / "clip.mp4"
    with caplog.at_level(logging.ERROR):
        assert generate.main([*SMALL, "--output-path", str(output)]) == 2
    assert "t2v denoising produced NaN or Inf values" in caplog.text
    assert "NaN or Inf weights in the checkpoint" in caplog.text and "--lora multiplier" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_an_extreme_refinement_lora_stops_the_refinement(tmp_path, monkeypatch, caplog):
    def extreme(pipe):
        pipe._named_loras[REFINE_LORA] = pipe.named_lora(REFINE_LORA).with_multiplier(1e38)

    _builtin_with(monkeypatch, extreme)
    output = tmp_path / "clip.mp4"
    with caplog.at_level(logging.ERROR):
        refine = ["--refine", "--refine-height", "64", "--refine-width", "64", "--refine-inference-steps", "2"]
        assert generate.main([*SMALL, *refine, "--output-path", str(output)]) == 2
    assert "refine denoising produced NaN or Inf values" in caplog.text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_on_host_and_device(bad):
    good = np.zeros((2, 3), np.float32)
    check_finite(good, "stage")
    check_finite(jnp.asarray(good), "stage")
    broken = good.copy()
    broken[1, 2] = bad
    for array in (broken, jnp.asarray(broken), jnp.asarray(broken, jnp.bfloat16)):
        with pytest.raises(NonFiniteError, match="my stage produced NaN or Inf values"):
            check_finite(array, "my stage")


def test_nan_from_the_vae_decoder_is_not_written_as_black():
    video = np.zeros((3, 2, 4, 4), np.float32)
    video[0, 1, 2, 3] = np.nan
    with pytest.raises(NonFiniteError, match="VAE decode produced NaN"):
        to_uint8_frames(video)
    with pytest.raises(NonFiniteError, match="VAE decode produced NaN"):
        to_uint8_frames(jnp.asarray(video))
