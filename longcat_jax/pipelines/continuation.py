"""Video continuation and long video.

Continuation: the input video (already at 15 fps) picks the bucket nearest its aspect ratio; its last
`num_cond_frames` frames (13 = 4 latents by default) are resized (Lanczos), encoded once, run through the DiT once
at timestep 0 to cache their keys and values, and every step then denoises only the new latent frames, attending
to the cached condition. Unless distilled, the schedule's tail below t=500 is replaced by 10 even steps (the
original's `enhance_hf`). The result is the decoded whole (condition + new) latent video.

Long video: a t2v clip, then `num_segments` continuations, each conditioned on the last `num_cond_frames` frames
of the previous clip; the frames after the condition are appended each time (93 + 80 per segment by default).
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from longcat_jax.bsa_config import BSAConfig
from longcat_jax.errors import InputError
from longcat_jax.pipelines.buckets import num_latent_frames, round_num_frames
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
from longcat_jax.pipelines.scheduler import make_schedule, with_uniform_tail
from longcat_jax.pipelines.t2v import Sampling, generate_t2v
from longcat_jax.video_io import resize_frames, to_model_input

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ContinuationPlan:
    """Frame size, total frames (condition included) and condition frames of one continuation clip."""

    height: int
    width: int
    num_frames: int
    num_cond_frames: int

    @property
    def latent_frames(self) -> int:
        return num_latent_frames(self.num_frames)

    @property
    def cond_latents(self) -> int:
        return num_latent_frames(self.num_cond_frames)


def plan_continuation(
    frame_size: tuple[int, int],
    available_frames: int,
    num_frames: int,
    num_cond_frames: int,
    bsa: BSAConfig,
    defaults: PipelineDefaults,
    resolution: str = "480p",
) -> ContinuationPlan:
    """Checks a continuation request against the input video (frame size, frame count) before any compute."""
    height, width = bucket_for(frame_size[0], frame_size[1], defaults, resolution)
    num_frames = round_num_frames(num_frames)
    if num_cond_frames < 1 or num_cond_frames % 4 != 1:
        raise InputError(f"num_cond_frames must be 1 + 4k (the VAE encodes such counts), got {num_cond_frames}; try 13")
    if num_cond_frames >= num_frames or num_latent_frames(num_cond_frames) >= num_latent_frames(num_frames):
        raise InputError(
            f"num_cond_frames {num_cond_frames} leaves no new latent frame in {num_frames} frames; "
            f"raise --num-frames above {num_cond_frames + 3}"
        )
    if available_frames < num_cond_frames:
        raise InputError(
            f"the input video has {available_frames} frames at 15 fps; continuation needs at least {num_cond_frames}; "
            "give a longer video or a smaller --num-cond-frames"
        )
    plan = ContinuationPlan(height, width, num_frames, num_cond_frames)
    grid = token_grid(plan.latent_frames - plan.cond_latents, height, width)
    check_bsa_grids(bsa, grid, num_cond_latents=plan.cond_latents, kv_cache=True)
    return plan


def generate_continuation(
    pipe: LongCatPipeline,
    video: np.ndarray,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    num_frames: int | None = None,
    num_cond_frames: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    distill: bool = False,
    seed: int = 0,
    resolution: str = "480p",
    bsa: BSAConfig | None = None,
) -> GeneratedVideo:
    """Continues `video` (uint8 [F, H, W, 3] at 15 fps): all `num_frames` decoded frames at the bucket size, the
    first `num_cond_frames` of them the re-decoded condition (see `join_continuation`)."""
    defaults = pipe.defaults
    bsa = bsa or pipe.bsa
    plan = plan_continuation(
        video.shape[1:3],
        video.shape[0],
        num_frames or defaults.num_frames,
        num_cond_frames or defaults.num_cond_frames,
        bsa,
        defaults,
        resolution,
    )
    sampling = Sampling.resolve(defaults, num_inference_steps, guidance_scale, distill)
    negative = (negative_prompt or "") if uses_guidance(sampling.guidance_scale) else None
    text = pipe.encode_text(prompt, negative)
    noise_key, cond_key = jax.random.split(jax.random.key(seed))
    with pipe.stats.stage("encode condition"):
        cond_frames = resize_frames(video[-plan.num_cond_frames :], plan.height, plan.width, "lanczos")
        cond = pipe.encode_frames(to_model_input(cond_frames), cond_key)  # [1, C, Tc, h, w]
    denoiser = pipe.use_dit(bsa=bsa, loras=[pipe.named_lora(DISTILL_LORA)] if distill else [])
    with pipe.stats.stage("cache condition"):
        kv_cache = denoiser.condition_kv(cond.astype(pipe.dit.dtype), text_length=text.embeddings.shape[2])
    schedule = make_schedule(sampling.num_inference_steps, distill=distill, config=pipe.scheduler_config)
    if not distill:
        schedule = with_uniform_tail(schedule)
    latents = pipe.noise(noise_key, plan.latent_frames - plan.cond_latents, plan.height, plan.width)
    with pipe.stats.stage("continuation denoising") as record:
        latents = sample(
            denoiser,
            latents,
            schedule,
            text,
            guidance_scale=sampling.guidance_scale,
            guided=uses_guidance(sampling.guidance_scale),
            num_cond_latents=plan.cond_latents,
            kv_cache=kv_cache,
            desc="continuation denoising",
            step_times=record.step_times,
        )
    del kv_cache
    with pipe.stats.stage("decode"):
        frames = pipe.decode_latents(jnp.concatenate([cond, latents], axis=2))
    return GeneratedVideo(frames, defaults.fps)


def join_continuation(video: np.ndarray, generated: np.ndarray, num_cond_frames: int) -> np.ndarray:
    """The input video followed by the generated frames after the condition, resized (bicubic) to the input's
    size, as the original's continuation demo writes it."""
    new = resize_frames(generated[num_cond_frames:], video.shape[1], video.shape[2], "bicubic")
    return np.concatenate([video, new], axis=0)


def generate_long_video(
    pipe: LongCatPipeline,
    prompt: str,
    *,
    num_segments: int,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    num_cond_frames: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    distill: bool = False,
    seed: int = 0,
    resolution: str = "480p",
    bsa: BSAConfig | None = None,
) -> GeneratedVideo:
    """A t2v clip extended by `num_segments` continuations: num_frames + num_segments * (num_frames -
    num_cond_frames) frames at 15 fps. Each continuation is made at the `resolution` bucket nearest the clip's
    aspect ratio (480p, as the original's long-video demo) and resized to the first clip's size."""
    defaults = pipe.defaults
    num_cond_frames = num_cond_frames or defaults.num_cond_frames
    if num_segments < 0:
        raise InputError(f"--num-segments must be 0 or more, got {num_segments}")
    options = dict(
        negative_prompt=negative_prompt,
        num_frames=num_frames,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        distill=distill,
        bsa=bsa,
    )
    first = generate_t2v(pipe, prompt, height=height, width=width, seed=seed, **options)
    frames = [first.frames]
    current = first.frames
    for segment in range(num_segments):
        logger.info("Generating segment %d/%d", segment + 1, num_segments)
        clip = generate_continuation(
            pipe, current, prompt, num_cond_frames=num_cond_frames, seed=seed + segment + 1, resolution=resolution,
            **options
        ).frames
        clip = resize_frames(clip, current.shape[1], current.shape[2], "bicubic")
        frames.append(clip[num_cond_frames:])
        current = clip
    return GeneratedVideo(np.concatenate(frames, axis=0), first.fps)
