"""Text-to-video and image-to-video: noise -> sampled latents -> decoded frames.

t2v: sizes multiples of 16, frame count rounded to 1 + 4k, classifier-free guidance with CFG-zero* whenever
guidance > 1 (negative prompt "" unless given). Distilled: `cfg_step_lora`, 16 steps on the distill table,
guidance 1. i2v: the size is the bucket nearest the image's aspect ratio; the image is resized (Lanczos), encoded
to one latent frame that replaces latent frame 0 and stays clean (timestep 0, never stepped). `plan_*` checks every
input against sizes and the BSA chunk shape without touching a model, so the CLI can refuse before loading.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np

from longcat_jax.bsa_config import BSAConfig
from longcat_jax.pipelines.buckets import check_side_multiple, num_latent_frames, round_num_frames
from longcat_jax.pipelines.denoise import check_bsa_grids, sample
from longcat_jax.pipelines.guidance import uses_guidance
from longcat_jax.pipelines.pipeline import (
    DISTILL_LORA,
    GeneratedVideo,
    LongCatPipeline,
    PipelineDefaults,
    bucket_for,
    token_grid,
)
from longcat_jax.pipelines.scheduler import make_schedule
from longcat_jax.video_io import resize_frames, to_model_input

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    """What a t2v or i2v run will make: frame size, frame count (1 + 4k) and latent frames."""

    height: int
    width: int
    num_frames: int

    @property
    def latent_frames(self) -> int:
        return num_latent_frames(self.num_frames)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Step count, guidance and schedule kind of a generation stage, defaults filled in."""

    num_inference_steps: int
    guidance_scale: float
    distill: bool

    @classmethod
    def resolve(
        cls, defaults: PipelineDefaults, num_inference_steps: int | None, guidance_scale: float | None, distill: bool
    ) -> "Sampling":
        """The original's defaults: 50 steps and guidance 4; distilled 16 steps and guidance 1."""
        steps = num_inference_steps or (defaults.distill_inference_steps if distill else defaults.num_inference_steps)
        guidance = guidance_scale if guidance_scale is not None else (1.0 if distill else defaults.guidance_scale)
        return cls(int(steps), float(guidance), distill)


def plan_t2v(height: int, width: int, num_frames: int, bsa: BSAConfig) -> GenerationPlan:
    """Checks a t2v request (sizes multiple of 16, BSA chunks fit) and rounds the frame count; models untouched."""
    check_side_multiple(height, width)
    plan = GenerationPlan(height, width, round_num_frames(num_frames))
    check_bsa_grids(bsa, token_grid(plan.latent_frames, height, width))
    return plan


def plan_i2v(
    image_size: tuple[int, int], num_frames: int, bsa: BSAConfig, defaults: PipelineDefaults, resolution: str = "480p"
) -> GenerationPlan:
    """The i2v size is the bucket nearest the image's (height, width); checks BSA with the condition frame."""
    height, width = bucket_for(image_size[0], image_size[1], defaults, resolution)
    plan = GenerationPlan(height, width, round_num_frames(num_frames))
    check_bsa_grids(bsa, token_grid(plan.latent_frames, height, width), num_cond_latents=1)
    return plan


def generate_t2v(
    pipe: LongCatPipeline,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    distill: bool = False,
    seed: int = 0,
    bsa: BSAConfig | None = None,
) -> GeneratedVideo:
    """A video for `prompt`; defaults (None) are the pipeline's (480x832, 93 frames, 50 steps, guidance 4)."""
    defaults = pipe.defaults
    bsa = bsa or pipe.bsa
    plan = plan_t2v(height or defaults.height, width or defaults.width, num_frames or defaults.num_frames, bsa)
    sampling = Sampling.resolve(defaults, num_inference_steps, guidance_scale, distill)
    text = _text(pipe, prompt, negative_prompt, sampling.guidance_scale)
    latents = pipe.noise(jax.random.key(seed), plan.latent_frames, plan.height, plan.width)
    latents = _denoise(pipe, latents, text, sampling, bsa, num_cond_latents=0, stage="t2v")
    return GeneratedVideo(_decode(pipe, latents), defaults.fps)


def generate_i2v(
    pipe: LongCatPipeline,
    image: np.ndarray,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    num_frames: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    distill: bool = False,
    seed: int = 0,
    resolution: str = "480p",
    bsa: BSAConfig | None = None,
) -> GeneratedVideo:
    """A video starting from `image` (uint8 [H, W, 3]); the size is the bucket nearest its aspect ratio."""
    defaults = pipe.defaults
    bsa = bsa or pipe.bsa
    plan = plan_i2v(image.shape[:2], num_frames or defaults.num_frames, bsa, defaults, resolution)
    sampling = Sampling.resolve(defaults, num_inference_steps, guidance_scale, distill)
    text = _text(pipe, prompt, negative_prompt, sampling.guidance_scale)
    noise_key, cond_key = jax.random.split(jax.random.key(seed))
    with pipe.stats.stage("encode image"):
        pixels = to_model_input(resize_frames(image[None], plan.height, plan.width, "lanczos"))  # [1, 3, 1, H, W]
        cond = pipe.encode_frames(pixels, cond_key)  # [1, C, 1, h, w]
    latents = pipe.noise(noise_key, plan.latent_frames, plan.height, plan.width)
    latents = latents.at[:, :, :1].set(cond)
    latents = _denoise(pipe, latents, text, sampling, bsa, num_cond_latents=1, stage="i2v")
    return GeneratedVideo(_decode(pipe, latents), defaults.fps)


def _text(pipe: LongCatPipeline, prompt: str, negative_prompt: str | None, guidance_scale: float):
    """The prompt's embeddings, with the negative prompt's ('' by default) when guidance is on."""
    negative = (negative_prompt or "") if uses_guidance(guidance_scale) else None
    return pipe.encode_text(prompt, negative)


def _denoise(pipe, latents, text, sampling: Sampling, bsa: BSAConfig, *, num_cond_latents: int, stage: str):
    loras = [pipe.named_lora(DISTILL_LORA)] if sampling.distill else []
    denoiser = pipe.use_dit(bsa=bsa, loras=loras)
    schedule = make_schedule(sampling.num_inference_steps, distill=sampling.distill, config=pipe.scheduler_config)
    with pipe.stats.stage(f"{stage} denoising") as record:
        return sample(
            denoiser,
            latents,
            schedule,
            text,
            guidance_scale=sampling.guidance_scale,
            guided=uses_guidance(sampling.guidance_scale),
            num_cond_latents=num_cond_latents,
            desc=f"{stage} denoising",
            step_times=record.step_times,
        )


def _decode(pipe: LongCatPipeline, latents) -> np.ndarray:
    with pipe.stats.stage("decode"):
        return pipe.decode_latents(latents)
