"""Sample videos during training (`sample.every`, off by default): written every N steps from the fixed prompt and
seed, each the video generation makes with the LoRA saved at that step."""

import numpy as np
import pytest

from longcat_jax.models.dit import load_lora
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.t2v import generate_t2v
from longcat_jax.presets import TINY_DEFAULTS
from longcat_jax.training import sample_video
from longcat_jax.training.loop import run_training
from longcat_jax.training.models import load_encoders
from tests.training.synthetic import small_dit, smooth_clip, train_config, write_cache

PROMPT = "a red square moves to the right"
SAMPLE = {"every": 2, "prompt": PROMPT, "seed": 7, "num_inference_steps": 2}


@pytest.mark.slow
def test_a_sample_every_n_steps_is_what_generate_gives_with_that_steps_lora(tmp_path, monkeypatch):
    config = train_config(tmp_path, training={"steps": 4, "seed": 3, "log_every": 2}, optimizer={"learning_rate": 1e-2},
                          checkpoint={"every": 2, "keep": 5}, sample=SAMPLE)
    write_cache(config, {"clip.mp4": smooth_clip(0)})  # latents 2 x 8 x 8: 5 frames of 64 x 64
    written = {}

    def save_video(path, frames, fps):
        written[path.name] = frames
        return real_save_video(path, frames, fps)

    real_save_video = sample_video.save_video
    monkeypatch.setattr(sample_video, "save_video", save_video)
    run_training(config, dit=small_dit())

    samples = config.output_dir / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["step_000002.mp4", "step_000004.mp4"]
    assert written["step_000002.mp4"].shape == (5, 64, 64, 3)  # the training clips' size by default
    assert not np.array_equal(written["step_000002.mp4"], written["step_000004.mp4"])  # the LoRA trained on between

    encoders = load_encoders(config)
    lora = load_lora(config.output_dir / "lora" / "step_000002.safetensors")
    pipe = LongCatPipeline(small_dit(), encoders.vae, encoders.text_encoder, encoders.tokenizer, loras=[lora],
                           defaults=TINY_DEFAULTS, builtin=True)
    video = generate_t2v(pipe, PROMPT, height=64, width=64, num_frames=5, num_inference_steps=2, seed=7)
    difference = np.abs(video.frames.astype(np.int16) - written["step_000002.mp4"].astype(np.int16))
    assert difference.max() <= 1  # float32 rounding may move a pixel by one level
