"""Video continuation.

The input video (already at 15 fps) picks the bucket nearest its aspect ratio; its last `num_cond_frames` frames
(13 = 4 latents by default) are resized (Lanczos), encoded once, run through the DiT once at timestep 0 to cache
their keys and values, and every step then denoises only the new latent frames, attending to the cached condition.
Unless distilled, the schedule's tail below t=500 is replaced by 10 even steps (the original's `enhance_hf`). The
result is the decoded whole (condition + new) latent video; `join_continuation` writes it after the input.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kernels import BSAParams
from longcat_jax.checkpoint.layout import DISTILL_LORA
from longcat_jax.errors import InputError
from longcat_jax.nan_guard import check_finite
from longcat_jax.pipelines.bsa import Stage, check_bsa_grids
from longcat_jax.pipelines.buckets import num_latent_frames, round_num_frames
from longcat_jax.pipelines.denoise import sample
from longcat_jax.pipelines.geometry import bucket_for, token_grid, warn_of_upscaled_input
from longcat_jax.pipelines.options import GeneratedVideo, GenerationOptions, PlanContext, Sampling, with_changes
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.refine import plan_refinement, run_refine
from longcat_jax.pipelines.request import RunSetup, TaskStages
from longcat_jax.pipelines.scheduler import make_schedule, with_uniform_tail
from longcat_jax.seeds import key_from_seed
from longcat_jax.video_io import resize_frames, to_model_input


@dataclasses.dataclass(frozen=True)
class ContinuationPlan:
    """One checked continuation clip: frame size, total frames (condition included), condition frames, sampling
    (with the negative prompt), BSA and seed."""

    height: int
    width: int
    num_frames: int
    num_cond_frames: int
    sampling: Sampling
    bsa: BSAParams | None
    seed: int

    @property
    def latent_frames(self) -> int:
        return num_latent_frames(self.num_frames)

    @property
    def cond_latents(self) -> int:
        return num_latent_frames(self.num_cond_frames)


def plan_continuation(
    frame_size: tuple[int, int], available_frames: int, options: GenerationOptions, context: PlanContext,
    source: str = "the --video's frame",
) -> ContinuationPlan:
    """Checks a continuation of a video of `frame_size` and `available_frames` frames (at 15 fps) before any
    compute; the size is the `options.resolution` bucket nearest the video's (`source` names the video's frame in
    the warning of a much smaller one)."""
    defaults = context.defaults
    height, width = bucket_for(frame_size[0], frame_size[1], defaults, options.resolution)
    warn_of_upscaled_input(source, frame_size, (height, width))
    num_frames = round_num_frames(options.num_frames or defaults.num_frames)
    num_cond_frames = options.num_cond_frames or defaults.num_cond_frames
    if num_cond_frames < 1 or num_cond_frames % 4 != 1:
        nearest = max(1, (num_cond_frames - 1) // 4 * 4 + 1)  # the 1 + 4k at or below it
        raise InputError(f"--num-cond-frames must be 1 + 4k (the VAE encodes such counts), got {num_cond_frames}; try "
                         f"{nearest} (the default is {defaults.num_cond_frames})")
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
    cond_latents = num_latent_frames(num_cond_frames)
    grid = token_grid(num_latent_frames(num_frames) - cond_latents, height, width)  # the new frames
    bsa = context.stage_bsa(Stage.CONTINUATION, options.bsa, max(grid[0], cond_latents))
    check_bsa_grids(bsa, grid, num_cond_latents=cond_latents, kv_cache=True)
    return ContinuationPlan(height, width, num_frames, num_cond_frames, Sampling.resolve(defaults, options), bsa,
                            options.seed)


def run_continuation(pipe: LongCatPipeline, video: np.ndarray, prompt: str, plan: ContinuationPlan) -> GeneratedVideo:
    """All `plan.num_frames` decoded frames of a checked continuation of `video` (uint8 [F, H, W, 3] at 15 fps), the
    first `plan.num_cond_frames` of them the re-decoded condition."""
    sampling = plan.sampling
    text = pipe.encode_text(prompt, sampling.negative_prompt)
    noise_key, cond_key = jax.random.split(key_from_seed(plan.seed))
    with pipe.stats.stage("encode condition"):
        cond_frames = resize_frames(video[-plan.num_cond_frames :], plan.height, plan.width, "lanczos")
        cond = pipe.encode_frames(to_model_input(cond_frames), cond_key)  # [1, C, Tc, h, w]
        check_finite(cond, "continuation condition encode (VAE)")
    denoiser = pipe.use_dit(bsa=plan.bsa, loras=[pipe.named_lora(DISTILL_LORA)] if sampling.distill else [])
    with pipe.stats.stage("cache condition"):
        kv_cache = denoiser.condition_kv(cond.astype(pipe.dit.dtype), text_length=text.embeddings.shape[2])
    schedule = make_schedule(sampling.num_inference_steps, distill=sampling.distill, config=pipe.scheduler_config)
    if not sampling.distill:
        schedule = with_uniform_tail(schedule)
    latents = pipe.noise(noise_key, plan.latent_frames - plan.cond_latents, plan.height, plan.width)
    with pipe.stats.stage("continuation denoising") as record:
        latents = sample(
            denoiser,
            latents,
            schedule,
            text,
            guidance_scale=sampling.guidance_scale,
            guided=sampling.guided,
            num_cond_latents=plan.cond_latents,
            kv_cache=kv_cache,
            desc="continuation denoising",
            step_times=record.step_times,
        )
    del kv_cache
    with pipe.stats.stage("decode"):
        frames = pipe.decode_latents(jnp.concatenate([cond, latents], axis=2))
    return GeneratedVideo(frames, pipe.defaults.fps)


def generate_continuation(pipe: LongCatPipeline, video: np.ndarray, prompt: str,
                          options: GenerationOptions | None = None, **changes) -> GeneratedVideo:
    """Continues `video` (uint8 [F, H, W, 3] at 15 fps): all `num_frames` decoded frames at the bucket size, the
    first `num_cond_frames` of them the re-decoded condition (see `join_continuation`). Keywords replace fields of
    `options`."""
    options = with_changes(options, GenerationOptions, changes)
    plan = plan_continuation(video.shape[1:3], video.shape[0], options, pipe.plan_context)
    return run_continuation(pipe, video, prompt, plan)


def join_continuation(video: np.ndarray, generated: np.ndarray, num_cond_frames: int,
                      size: tuple[int, int] | None = None) -> np.ndarray:
    """The input video followed by the generated frames after the condition, both at `size` (height, width; None:
    the input's size, as the original's continuation demo writes it), resized bicubic where they differ from it."""
    height, width = video.shape[1:3] if size is None else size
    new = resize_frames(generated[num_cond_frames:], height, width, "bicubic")
    return np.concatenate([resize_frames(video, height, width, "bicubic"), new], axis=0)


def plan_task(setup: RunSetup) -> TaskStages:
    """`--task continuation`: --video continued; with --refine, the refinement is conditioned on the input's last
    frames at the refined frame rate (twice --num-cond-frames, or once with --spatial-refine-only)."""
    video = setup.inputs.video
    generation = plan_continuation(video.shape[1:3], len(video), setup.generation, setup.context)
    num_cond = generation.num_cond_frames * setup.refine_frame_factor
    if setup.refinement is not None and len(setup.inputs.refine_video) < num_cond:
        raise InputError(f"the input video is too short to condition the refinement on {num_cond} frames")
    refinement = plan_refinement(setup, (generation.height, generation.width), generation.num_frames,
                                 num_cond_frames=num_cond)
    if refinement is None:  # the input, then the new frames
        num_frames = len(video) + generation.num_frames - generation.num_cond_frames
        generated_size = (generation.height, generation.width)
    else:  # the input at the refined rate, then the refined new frames
        num_frames = len(setup.inputs.refine_video) + refinement.num_frames - refinement.num_cond_frames
        generated_size = (refinement.height, refinement.width)
    size = video.shape[1:3] if setup.request.output_size == "input" else generated_size
    return TaskStages(generation, refinement, (num_frames, *size))


def run_task(pipe: LongCatPipeline, setup: RunSetup, stages: TaskStages) -> GeneratedVideo:
    """The input followed by the new frames (refined: the input at the refined rate, then the refined frames), at
    `stages.output_shape`'s size (the input's, by default)."""
    size = stages.output_shape[1:]
    video = run_continuation(pipe, setup.inputs.video, setup.prompt, stages.generation)
    if stages.refinement is None:
        joined = join_continuation(setup.inputs.video, video.frames, stages.generation.num_cond_frames, size)
        return GeneratedVideo(joined, video.fps)
    source = setup.inputs.refine_video
    num_cond = stages.refinement.num_cond_frames
    refined = run_refine(pipe, video.frames, setup.refine_prompt, stages.refinement, cond_video=source)
    return GeneratedVideo(join_continuation(source, refined.frames, num_cond, size), refined.fps)
