"""Refinement 480p -> 720p: stage-1 frames upsampled, re-encoded, noised to t_thresh 0.5 and denoised with
`refinement_lora` and block-sparse attention.

The size is the 720p bucket (sides multiple of 64) nearest the stage-1 aspect ratio; frames double (linear in time)
unless spatial-only. Latent frames are padded to multiples of 4 so the 4x4x4 BSA chunks tile them: condition
frames (from an image or a video, kept clean) get copies of their first frame in front, the noisy part copies of
the last frame at the back; the padding is cut from the output. No guidance. 30 fps (15 spatial-only).

`refine_long_video` walks a long stage-1 video in windows of `num_frames` with a stride of num_frames -
num_cond_frames, each conditioned on the tail of the previous refined window, as the original long-video demo.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from longcat_jax.bsa_config import BSAConfig
from longcat_jax.errors import InputError
from longcat_jax.pipelines.buckets import REFINE_SIDE_MULTIPLE, VAE_TEMPORAL_FACTOR, check_side_multiple
from longcat_jax.pipelines.denoise import check_bsa_grids, sample
from longcat_jax.pipelines.pipeline import (
    REFINE_LORA,
    GeneratedVideo,
    LongCatPipeline,
    PipelineDefaults,
    bucket_for,
    token_grid,
)
from longcat_jax.pipelines.scheduler import make_schedule, noise_to_level, start_at
from longcat_jax.video_io import resize_frames, to_model_input, upsample_for_refine

logger = logging.getLogger(__name__)

T_THRESH = 0.5
BSA_LATENT_GRANULARITY = 4  # latent frames per BSA chunk along time


@dataclasses.dataclass(frozen=True)
class RefinePlan:
    """Sizes of one refinement: output frames and the latent padding around condition and noisy frames."""

    height: int
    width: int
    num_frames: int  # output frames: 2x stage 1, or 1x spatial-only
    num_cond_frames: int  # condition frames as given (0: none)
    cond_frames_added: int  # copies of the first frame put in front of the condition
    cond_latents: int
    noise_latents: int
    noise_frames_added: int  # copies of the last frame appended to the upsampled video
    spatial_only: bool

    @property
    def latent_frames(self) -> int:
        return self.cond_latents + self.noise_latents

    @property
    def fps(self) -> float:
        """Doubling the frames doubles the frame rate of the 15 fps stage 1."""
        return 15.0 if self.spatial_only else 30.0


def plan_refine(
    stage1_size: tuple[int, int],
    stage1_frames: int,
    bsa: BSAConfig,
    defaults: PipelineDefaults,
    *,
    num_cond_frames: int = 0,
    spatial_only: bool = False,
    size: tuple[int, int] | None = None,
) -> RefinePlan:
    """The refinement's sizes and padding, checked against BSA, before any compute. `size` (height, width)
    replaces the bucket; it must be a multiple of 64."""
    height, width = size or bucket_for(stage1_size[0], stage1_size[1], defaults, "720p", REFINE_SIDE_MULTIPLE)
    check_side_multiple(height, width, REFINE_SIDE_MULTIPLE)
    if stage1_frames < 1:
        raise InputError("the stage-1 video has no frames")
    num_frames = stage1_frames if spatial_only else 2 * stage1_frames
    if not 0 <= num_cond_frames < num_frames:
        raise InputError(f"num_cond_frames {num_cond_frames} must be below the {num_frames} refined frames")
    factor, granularity = VAE_TEMPORAL_FACTOR, BSA_LATENT_GRANULARITY
    cond_latents = cond_added = 0
    if num_cond_frames:
        cond_latents = granularity * math.ceil((1 + math.ceil((num_cond_frames - 1) / factor)) / granularity)
        cond_added = 1 + (cond_latents - 1) * factor - num_cond_frames
    noise_frames = num_frames - num_cond_frames
    noise_latents = granularity * math.ceil(math.ceil(noise_frames / factor) / granularity)
    plan = RefinePlan(
        height, width, num_frames, num_cond_frames, cond_added, cond_latents, noise_latents,
        noise_latents * factor - noise_frames, spatial_only,
    )
    check_bsa_grids(bsa, token_grid(plan.latent_frames, height, width), num_cond_latents=cond_latents)
    return plan


def generate_refine(
    pipe: LongCatPipeline,
    stage1: np.ndarray,
    prompt: str = "",
    *,
    image: np.ndarray | None = None,
    cond_video: np.ndarray | None = None,
    num_cond_frames: int = 0,
    spatial_only: bool = False,
    num_inference_steps: int | None = None,
    t_thresh: float = T_THRESH,
    seed: int = 0,
    bsa: BSAConfig | None = None,
    size: tuple[int, int] | None = None,
) -> GeneratedVideo:
    """Refines stage-1 frames (uint8 [F, h, w, 3]) to the 720p bucket (or `size`); `image` (i2v, num_cond_frames
    1) or the last `num_cond_frames` of `cond_video` stay as clean conditions."""
    if image is not None and cond_video is not None:
        raise InputError("give an image or a condition video for refinement, not both")
    if image is not None:
        num_cond_frames = num_cond_frames or 1
        if num_cond_frames != 1:
            raise InputError("an image condition is one frame: num_cond_frames must be 1")
    elif cond_video is not None and not 0 < num_cond_frames <= len(cond_video):
        raise InputError(f"num_cond_frames must be in 1..{len(cond_video)} for this condition video")
    elif cond_video is None and num_cond_frames:
        raise InputError("num_cond_frames > 0 needs an image or a condition video")
    bsa = bsa or pipe.refine_bsa()
    plan = plan_refine(stage1.shape[1:3], stage1.shape[0], bsa, pipe.defaults,
                       num_cond_frames=num_cond_frames, spatial_only=spatial_only, size=size)
    text = pipe.encode_text(prompt)
    noise_key, video_key, cond_key = jax.random.split(jax.random.key(seed), 3)
    schedule = start_at(
        make_schedule(num_inference_steps or pipe.defaults.refine_inference_steps, config=pipe.scheduler_config),
        t_thresh,
    )
    with pipe.stats.stage("refine upsample + encode"):
        video = upsample_for_refine(stage1, plan.num_frames, plan.height, plan.width)  # [1, 3, F', H, W]
        video = jnp.concatenate(
            [
                jnp.repeat(video[:, :, :1], plan.cond_frames_added, axis=2),
                video,
                jnp.repeat(video[:, :, -1:], plan.noise_frames_added, axis=2),
            ],
            axis=2,
        )
        latents = pipe.encode_frames(video, video_key)  # [1, C, T, h, w]
        del video
        latents = noise_to_level(latents, jax.random.normal(noise_key, latents.shape, jnp.float32), t_thresh)
        if plan.cond_latents:
            source = image[None] if image is not None else cond_video[-plan.num_cond_frames :]
            frames = resize_frames(source, plan.height, plan.width, "lanczos")
            frames = np.concatenate([np.repeat(frames[:1], plan.cond_frames_added, axis=0), frames], axis=0)
            cond = pipe.encode_frames(to_model_input(frames), cond_key)
            latents = latents.at[:, :, : plan.cond_latents].set(cond)
    denoiser = pipe.use_dit(bsa=bsa, loras=[pipe.named_lora(REFINE_LORA)])
    with pipe.stats.stage("refine denoising") as record:
        latents = sample(
            denoiser, latents, schedule, text, num_cond_latents=plan.cond_latents, desc="refine denoising",
            step_times=record.step_times,
        )
    with pipe.stats.stage("decode"):
        frames = pipe.decode_latents(latents)
    start = plan.cond_frames_added
    return GeneratedVideo(frames[start : start + plan.num_frames], plan.fps)


def refine_long_video(
    pipe: LongCatPipeline,
    stage1: np.ndarray,
    prompt: str = "",
    *,
    num_frames: int | None = None,
    num_cond_frames: int | None = None,
    spatial_only: bool = False,
    num_inference_steps: int | None = None,
    seed: int = 0,
    bsa: BSAConfig | None = None,
) -> GeneratedVideo:
    """Refines a long stage-1 video window by window (see the module docstring)."""
    window = num_frames or pipe.defaults.num_frames
    overlap = num_cond_frames or pipe.defaults.num_cond_frames
    if window <= overlap:
        raise InputError(f"refinement windows of {window} frames cannot overlap by {overlap} frames")
    refined: list[np.ndarray] = []
    previous: np.ndarray | None = None
    cond_frames = 0
    starts = range(0, max(len(stage1) - overlap, 1), window - overlap)
    fps = 15.0
    for index, start in enumerate(starts):
        logger.info("Refining window %d/%d", index + 1, len(starts))
        result = generate_refine(
            pipe,
            stage1[start : start + window],
            prompt,
            cond_video=previous,
            num_cond_frames=cond_frames,
            spatial_only=spatial_only,
            num_inference_steps=num_inference_steps,
            seed=seed + index,
            bsa=bsa,
        )
        refined.append(result.frames[cond_frames:])
        previous, fps = result.frames, result.fps
        cond_frames = overlap if spatial_only else 2 * overlap
    return GeneratedVideo(np.concatenate(refined, axis=0), fps)
