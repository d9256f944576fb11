"""Text-to-video: noise -> sampled latents -> decoded frames.

Sizes are multiples of 16, the frame count is rounded to 1 + 4k, classifier-free guidance with CFG-zero* runs
whenever guidance > 1 (with the original demos' negative prompt unless given). Distilled: `cfg_step_lora`, 16
steps on the distill table, guidance 1. `plan_t2v` checks the request against the sizes and the stage's BSA
without touching a model (so the CLI refuses before loading) and `run_t2v` runs that plan; `generate_t2v` does
both. The stage helpers (`encode_generation_text`, `denoise_generation`, `decode_video`) serve i2v as well.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kernels import BSAParams
from longcat_jax.checkpoint.layout import DISTILL_LORA
from longcat_jax.pipelines.bsa import Stage, check_bsa_grids
from longcat_jax.pipelines.buckets import check_side_multiple, num_latent_frames, round_num_frames
from longcat_jax.pipelines.denoise import TextCondition, sample
from longcat_jax.pipelines.geometry import token_grid
from longcat_jax.pipelines.options import GeneratedVideo, GenerationOptions, PlanContext, Sampling, with_changes
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.refine import plan_refinement, run_refine
from longcat_jax.pipelines.request import RunSetup, TaskStages
from longcat_jax.pipelines.scheduler import make_schedule
from longcat_jax.seeds import key_from_seed


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    """A checked t2v or i2v stage: frame size, frame count (1 + 4k), sampling (with the negative prompt), BSA and
    seed."""

    height: int
    width: int
    num_frames: int
    sampling: Sampling
    bsa: BSAParams | None
    seed: int

    @property
    def latent_frames(self) -> int:
        return num_latent_frames(self.num_frames)

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def shape(self) -> tuple[int, int, int]:
        """(frames, height, width) of the decoded video."""
        return self.num_frames, self.height, self.width


def plan_t2v(options: GenerationOptions, context: PlanContext) -> GenerationPlan:
    """Checks a t2v request (sizes multiple of 16, BSA chunks fit) and rounds the frame count; models untouched."""
    defaults = context.defaults
    height, width = options.height or defaults.height, options.width or defaults.width
    check_side_multiple(height, width)
    num_frames = round_num_frames(options.num_frames or defaults.num_frames)
    grid = token_grid(num_latent_frames(num_frames), height, width)
    bsa = context.stage_bsa(Stage.T2V, options.bsa, grid[0])
    check_bsa_grids(bsa, grid)
    return GenerationPlan(height, width, num_frames, Sampling.resolve(defaults, options), bsa, options.seed)


def run_t2v(pipe: LongCatPipeline, prompt: str, plan: GenerationPlan) -> GeneratedVideo:
    """The video of a checked t2v plan."""
    text = encode_generation_text(pipe, prompt, plan)
    latents = pipe.noise(key_from_seed(plan.seed), plan.latent_frames, plan.height, plan.width)
    latents = denoise_generation(pipe, latents, text, plan, num_cond_latents=0, stage="t2v")
    return GeneratedVideo(decode_video(pipe, latents), pipe.defaults.fps)


def generate_t2v(pipe: LongCatPipeline, prompt: str, options: GenerationOptions | None = None,
                 **changes) -> GeneratedVideo:
    """A video for `prompt`; options left None are the pipeline's (480x832, 93 frames, 50 steps, guidance 4).
    Keywords replace fields of `options` (`generate_t2v(pipe, prompt, distill=True, seed=42)`)."""
    options = with_changes(options, GenerationOptions, changes)
    return run_t2v(pipe, prompt, plan_t2v(options, pipe.plan_context))


def encode_generation_text(pipe: LongCatPipeline, prompt: str, plan: GenerationPlan) -> TextCondition:
    """The prompt's embeddings, with the negative prompt's when guidance is on."""
    return pipe.encode_text(prompt, plan.sampling.negative_prompt)


def denoise_generation(pipe: LongCatPipeline, latents, text: TextCondition, plan: GenerationPlan, *,
                       num_cond_latents: int, stage: str):
    """Samples `latents` [1, C, T, h, w] with the plan's steps, guidance, BSA and (distilled) LoRA."""
    sampling = plan.sampling
    loras = [pipe.named_lora(DISTILL_LORA)] if sampling.distill else []
    denoiser = pipe.use_dit(bsa=plan.bsa, loras=loras)
    schedule = make_schedule(sampling.num_inference_steps, distill=sampling.distill, config=pipe.scheduler_config)
    with pipe.stats.stage(f"{stage} denoising") as record:
        return sample(
            denoiser,
            latents,
            schedule,
            text,
            guidance_scale=sampling.guidance_scale,
            guided=sampling.guided,
            num_cond_latents=num_cond_latents,
            desc=f"{stage} denoising",
            step_times=record.step_times,
        )


def decode_video(pipe: LongCatPipeline, latents) -> np.ndarray:
    """Latents -> uint8 frames, timed as the `decode` stage."""
    with pipe.stats.stage("decode"):
        return pipe.decode_latents(latents)


def plan_task(setup: RunSetup) -> TaskStages:
    """`--task t2v`: the clip at --height/--width, then the refinement of it with --refine."""
    generation = plan_t2v(setup.generation, setup.context)
    refinement = plan_refinement(setup, generation.size, generation.num_frames)
    return TaskStages(generation, refinement, (refinement or generation).shape)


def run_task(pipe: LongCatPipeline, setup: RunSetup, stages: TaskStages) -> GeneratedVideo:
    video = run_t2v(pipe, setup.prompt, stages.generation)
    if stages.refinement is None:
        return video
    return run_refine(pipe, video.frames, setup.refine_prompt, stages.refinement)
