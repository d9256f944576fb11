"""Refinement 480p -> 720p: stage-1 frames upsampled, re-encoded, noised to t_thresh 0.5 and denoised with
`refinement_lora` and block-sparse attention.

The size is the 720p bucket (sides multiple of 64) nearest the stage-1 aspect ratio; frames double (linear in time)
unless spatial-only. Latent frames are padded to multiples of 4 so the 4x4x4 BSA chunks tile them: condition
frames (from an image or a video, kept clean) get copies of their first frame in front, the noisy part copies of
the last frame at the back; the padding is cut from the output. No guidance. 30 fps (15 spatial-only).

`plan_refine` checks sizes and the refinement's BSA before any compute, `run_refine` runs the plan,
`generate_refine` does both. `plan_refinement` is the refinement stage of every CLI task (`--refine`), and
`plan_task` / `run_task` are `--task refine`.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from kernels import BSAParams
from longcat_jax.checkpoint.layout import REFINE_LORA
from longcat_jax.errors import InputError
from longcat_jax.nan_guard import check_finite
from longcat_jax.pipelines.bsa import Stage, check_bsa_grids
from longcat_jax.pipelines.buckets import REFINE_SIDE_MULTIPLE, VAE_TEMPORAL_FACTOR, check_side_multiple
from longcat_jax.pipelines.denoise import sample
from longcat_jax.pipelines.geometry import bucket_for, token_grid
from longcat_jax.pipelines.options import GeneratedVideo, PlanContext, RefineOptions, with_changes
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.request import RunSetup, TaskStages
from longcat_jax.pipelines.scheduler import make_schedule, noise_to_level, start_at
from longcat_jax.seeds import key_from_seed
from longcat_jax.video_io import resize_frames, to_model_input, upsample_for_refine

BSA_LATENT_GRANULARITY = 4  # latent frames per BSA chunk along time
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RefinePlan:
    """One checked refinement: sizes, the latent padding around condition and noisy frames, steps and BSA."""

    height: int
    width: int
    num_frames: int  # output frames: 2x stage 1, or 1x spatial-only
    num_cond_frames: int  # condition frames as given (0: none)
    cond_frames_added: int  # copies of the first frame put in front of the condition
    cond_latents: int
    noise_latents: int
    noise_frames_added: int  # copies of the last frame appended to the upsampled video
    spatial_only: bool
    num_inference_steps: int
    t_thresh: float
    seed: int
    bsa: BSAParams | None

    @property
    def latent_frames(self) -> int:
        return self.cond_latents + self.noise_latents

    @property
    def fps(self) -> float:
        """Doubling the frames doubles the frame rate of the 15 fps stage 1."""
        return 15.0 if self.spatial_only else 30.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """(frames, height, width) of the refined video."""
        return self.num_frames, self.height, self.width


def plan_refine(
    stage1_size: tuple[int, int],
    stage1_frames: int,
    options: RefineOptions,
    context: PlanContext,
    *,
    num_cond_frames: int = 0,
) -> RefinePlan:
    """The refinement's sizes (logged), padding and BSA (resolved here, logged), checked before any compute.
    `options.size` (height, width) replaces the bucket; it must be a multiple of 64."""
    defaults = context.defaults
    height, width = options.size or bucket_for(*stage1_size, defaults, "720p", REFINE_SIDE_MULTIPLE)
    check_side_multiple(height, width, REFINE_SIDE_MULTIPLE)
    frames = _frames_and_padding(stage1_frames, num_cond_frames, options.spatial_only)
    how = "as asked" if options.size else "the 720p bucket nearest its aspect ratio; --refine-height/--refine-width set it"
    logger.info("Refinement: %dx%d (height x width; %s) from the %dx%d stage 1, %d frames", height, width, how,
                *stage1_size, frames["num_frames"])
    bsa = context.stage_bsa(Stage.REFINE, options.bsa, frames["cond_latents"] + frames["noise_latents"])
    plan = RefinePlan(height=height, width=width, **frames, spatial_only=options.spatial_only,
                      num_inference_steps=options.num_inference_steps or defaults.refine_inference_steps,
                      t_thresh=options.t_thresh, seed=options.seed, bsa=bsa)
    _check_bsa(plan)
    return plan


def plan_refine_window(first: RefinePlan, stage1_frames: int, num_cond_frames: int, seed: int) -> RefinePlan:
    """Another window of the refinement `first` plans (long video): its size, steps and BSA, other frames."""
    plan = dataclasses.replace(first, seed=seed, **_frames_and_padding(stage1_frames, num_cond_frames, first.spatial_only))
    _check_bsa(plan)
    return plan


def _check_bsa(plan: RefinePlan) -> None:
    check_bsa_grids(plan.bsa, token_grid(plan.latent_frames, plan.height, plan.width), num_cond_latents=plan.cond_latents)


def _frames_and_padding(stage1_frames: int, num_cond_frames: int, spatial_only: bool) -> dict[str, int]:
    """The frame fields of `RefinePlan`: whole BSA chunks of latent frames around the condition and the noisy
    frames, and the frames added to fill them."""
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
    return dict(num_frames=num_frames, num_cond_frames=num_cond_frames, cond_frames_added=cond_added,
                cond_latents=cond_latents, noise_latents=noise_latents,
                noise_frames_added=noise_latents * factor - noise_frames)


def _check_condition(image: np.ndarray | None, cond_video: np.ndarray | None, num_cond_frames: int) -> None:
    if image is not None and cond_video is not None:
        raise InputError("give an image or a condition video for refinement, not both")
    if image is not None and num_cond_frames != 1:
        raise InputError("an image condition is one frame: num_cond_frames must be 1")
    if cond_video is not None and not 0 < num_cond_frames <= len(cond_video):
        raise InputError(f"num_cond_frames must be in 1..{len(cond_video)} for this condition video")
    if image is None and cond_video is None and num_cond_frames:
        raise InputError("num_cond_frames > 0 needs an image or a condition video")


def generate_refine(
    pipe: LongCatPipeline,
    stage1: np.ndarray,
    prompt: str = "",
    options: RefineOptions | None = None,
    *,
    image: np.ndarray | None = None,
    cond_video: np.ndarray | None = None,
    num_cond_frames: int = 0,
    **changes,
) -> GeneratedVideo:
    """Refines stage-1 frames (uint8 [F, h, w, 3]) to the 720p bucket (or `options.size`); `image` (one condition
    frame) or the last `num_cond_frames` of `cond_video` stay as clean conditions. Keywords replace fields of
    `options` (`generate_refine(pipe, frames, prompt, seed=42)`)."""
    options = with_changes(options, RefineOptions, changes)
    if image is not None:
        num_cond_frames = num_cond_frames or 1
    _check_condition(image, cond_video, num_cond_frames)
    plan = plan_refine(stage1.shape[1:3], stage1.shape[0], options, pipe.plan_context, num_cond_frames=num_cond_frames)
    return run_refine(pipe, stage1, prompt, plan, image=image, cond_video=cond_video)


def run_refine(pipe: LongCatPipeline, stage1: np.ndarray, prompt: str, plan: RefinePlan, *,
               image: np.ndarray | None = None, cond_video: np.ndarray | None = None) -> GeneratedVideo:
    """The refined video of a checked plan; the condition (`image` or `cond_video`) is the one it was planned for."""
    _check_condition(image, cond_video, plan.num_cond_frames)
    text = pipe.encode_text(prompt)
    noise_key, video_key, cond_key = jax.random.split(key_from_seed(plan.seed), 3)
    schedule = start_at(make_schedule(plan.num_inference_steps, config=pipe.scheduler_config), plan.t_thresh)
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
        check_finite(latents, "refine upsample + encode (VAE)")
        latents = noise_to_level(latents, jax.random.normal(noise_key, latents.shape, jnp.float32), plan.t_thresh)
        if plan.cond_latents:
            source = image[None] if image is not None else cond_video[-plan.num_cond_frames :]
            frames = resize_frames(source, plan.height, plan.width, "lanczos")
            frames = np.concatenate([np.repeat(frames[:1], plan.cond_frames_added, axis=0), frames], axis=0)
            cond = pipe.encode_frames(to_model_input(frames), cond_key)
            check_finite(cond, "refine condition encode (VAE)")
            latents = latents.at[:, :, : plan.cond_latents].set(cond)
    denoiser = pipe.use_dit(bsa=plan.bsa, loras=[pipe.named_lora(REFINE_LORA)])
    with pipe.stats.stage("refine denoising") as record:
        latents = sample(
            denoiser, latents, schedule, text, num_cond_latents=plan.cond_latents, desc="refine denoising",
            step_times=record.step_times,
        )
    with pipe.stats.stage("decode"):
        frames = pipe.decode_latents(latents)
    start = plan.cond_frames_added
    return GeneratedVideo(frames[start : start + plan.num_frames], plan.fps)


def plan_refinement(setup: RunSetup, stage1_size: tuple[int, int], stage1_frames: int,
                    num_cond_frames: int = 0) -> RefinePlan | None:
    """The refinement stage of a CLI run (None without --refine) after a stage 1 of this size and frame count."""
    if setup.refinement is None:
        return None
    return plan_refine(stage1_size, stage1_frames, setup.refinement, setup.context, num_cond_frames=num_cond_frames)


def plan_task(setup: RunSetup) -> TaskStages:
    """`--task refine`: the --refine-from video, with --image or the last frames of --video as a condition;
    --height/--width (multiples of 64) replace the bucket."""
    request, inputs = setup.request, setup.inputs
    stage1 = inputs.stage1
    options = setup.refinement
    if request.height or request.width:  # or --refine-height/--refine-width, in the options already
        options = dataclasses.replace(options, size=(request.height or stage1.shape[1], request.width or stage1.shape[2]))
    num_cond = 0
    if inputs.image is not None:
        num_cond = 1
    elif inputs.refine_video is not None:
        num_cond = min(len(inputs.refine_video), setup.num_cond_frames * setup.refine_frame_factor)
    if request.num_cond_frames is not None and inputs.refine_video is None:
        logger.warning("--num-cond-frames is how many of --video's last frames condition the refinement; without "
                       "--video it is ignored")
    refinement = plan_refine(stage1.shape[1:3], len(stage1), options, setup.context, num_cond_frames=num_cond)
    return TaskStages(None, refinement, refinement.shape)


def run_task(pipe: LongCatPipeline, setup: RunSetup, stages: TaskStages) -> GeneratedVideo:
    inputs = setup.inputs
    return run_refine(pipe, inputs.stage1, setup.refine_prompt, stages.refinement, image=inputs.image,
                      cond_video=inputs.refine_video)
