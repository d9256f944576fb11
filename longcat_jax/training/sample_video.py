"""Sample videos during training (`sample.every` steps, off by default): what the LoRA generates so far.

Each sample is text-to-video from the same prompt and seed, so the samples of a run differ only by the steps
trained. It runs generation's own pieces: `plan_t2v` checks the size, frame count and BSA and resolves the step
count, guidance and negative prompt from the model's generation defaults; the prompt is encoded once by the
pipeline's text encoding (before the DiT loads; the text encoder is released right after); every sample starts
from `pipe.noise` of the fixed seed, runs `Denoiser` + `sample` on the scheduler's schedule and decodes through
`pipe.decode_latents`; `save_video` writes `OUTPUT/samples/step_<N>.mp4` (zero-padded: `step_000200.mp4`).

The DiT is the one being trained, with its float32 LoRA attached, so a sample is what `generate --lora` gives
with the LoRA of that step (same prompt, seed and settings). It runs the DiT with the attention training uses
(`bsa`). Conditioned tasks (i2v, continuation) are sampled as text-to-video too. One device only (the config
refuses `sample.every` with `parallel.devices` other than 1).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

from longcat_jax.models.dit import DiTConfig, LongCatDiT
from longcat_jax.pipelines.buckets import VAE_TEMPORAL_FACTOR
from longcat_jax.pipelines.denoise import Denoiser, TextCondition, sample
from longcat_jax.pipelines.options import GenerationOptions, PlanContext
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.scheduler import SchedulerConfig, make_schedule
from longcat_jax.pipelines.t2v import GenerationPlan, plan_t2v
from longcat_jax.seeds import key_from_seed
from longcat_jax.training.config import TrainConfig
from longcat_jax.training.models import DTYPES, generation_defaults, load_encoders
from longcat_jax.training.shapes import VAE_SPATIAL_FACTOR
from longcat_jax.video_io import save_video

logger = logging.getLogger(__name__)

SAMPLES_DIR = "samples"


def sample_plan(config: TrainConfig, dit_config: DiTConfig, bucket: tuple[int, int, int]) -> GenerationPlan:
    """The checked t2v plan of the samples; size and frame count default to `bucket` (latent T, h, w)."""
    sample_config = config.sample
    frames, height, width = bucket
    options = GenerationOptions(
        negative_prompt=sample_config.negative_prompt,
        height=sample_config.height or height * VAE_SPATIAL_FACTOR,
        width=sample_config.width or width * VAE_SPATIAL_FACTOR,
        num_frames=sample_config.num_frames or 1 + VAE_TEMPORAL_FACTOR * (frames - 1),
        num_inference_steps=sample_config.num_inference_steps,
        guidance_scale=sample_config.guidance_scale,
        seed=sample_config.seed,
        bsa=config.bsa,
    )
    return plan_t2v(options, PlanContext(generation_defaults(config), dit_config))


class SampleVideos:
    """The samples of one run: made with `create` before the DiT loads, then `write(model, step)` per sample."""

    def __init__(self, pipe: LongCatPipeline, plan: GenerationPlan, text: TextCondition, folder: Path):
        self.pipe = pipe
        self.plan = plan
        self.text = text
        self.folder = folder

    @classmethod
    def create(cls, config: TrainConfig, dit_config: DiTConfig, bucket: tuple[int, int, int]) -> SampleVideos:
        """Plans the samples (refusing a bad size or BSA tiling), loads the VAE and text encoder, encodes the prompt
        and releases the text encoder."""
        plan = sample_plan(config, dit_config, bucket)
        encoders = load_encoders(config)
        scheduler = SchedulerConfig() if config.builtin else SchedulerConfig.load(config.model_path)
        pipe = LongCatPipeline(None, encoders.vae, encoders.text_encoder, encoders.tokenizer,
                               scheduler_config=scheduler, defaults=generation_defaults(config), builtin=config.builtin,
                               dit_config=dit_config, dit_dtype=DTYPES[config.dtype])
        text = pipe.encode_text(config.sample.prompt, plan.sampling.negative_prompt)
        pipe.release_text_encoder()
        logger.info("A sample video every %d steps: %dx%d, %d frames, %d steps, guidance %g, seed %d, into %s",
                    config.sample.every, plan.width, plan.height, plan.num_frames, plan.sampling.num_inference_steps,
                    plan.sampling.guidance_scale, plan.seed, config.output_dir / SAMPLES_DIR)
        return cls(pipe, plan, text, config.output_dir / SAMPLES_DIR)

    def write(self, model: LongCatDiT, step: int) -> Path:
        """Samples a video with `model` (its LoRA as trained after `step` steps) and writes it; returns the path."""
        sampling = self.plan.sampling
        latents = self.pipe.noise(key_from_seed(self.plan.seed), self.plan.latent_frames, self.plan.height,
                                  self.plan.width)
        schedule = make_schedule(sampling.num_inference_steps, distill=False, config=self.pipe.scheduler_config)
        latents = sample(Denoiser(model), latents, schedule, self.text, guidance_scale=sampling.guidance_scale,
                         guided=sampling.guided, desc=f"Sample at step {step}")
        frames = self.pipe.decode_latents(latents)
        path = self.folder / f"step_{step:06d}.mp4"
        if jax.process_index() == 0:
            save_video(path, frames, self.pipe.defaults.fps)
            logger.info("Sample video of step %d: %s", step, path)
        return path

