"""What a run computes, stage by stage, in the terms the memory plan needs: the DiT calls (batch, token grid,
cached condition tokens, steps), the VAE encodes and decodes (frames and pixel size) and the prompts to encode.

`run_work` reads it off the task planners' stage plans (`longcat_jax.pipelines`: t2v/i2v `GenerationPlan`,
`ContinuationPlan`, `LongVideoPlan`, `RefinePlan`, `WindowedRefinePlan`) by their fields, so this package needs no
import of the pipelines (which import it); a plan type it does not know is a TypeError, never a silent
under-estimate. `released_pipeline_work` is the released pipeline's largest stages, for a pipeline made without a
run to plan for (`LongCatPipeline.from_pretrained(max_device_memory=...)`).
"""

from __future__ import annotations

import dataclasses
import math

from kernels import BSAParams
from longcat_jax.memory.footprint import DiTCall

VAE_TEMPORAL = 4  # video frames per latent frame (after the first)
LATENT_PATCH = 16  # pixels per DiT token side: VAE 8x times patch 2


def latent_frames(frames: int) -> int:
    return 1 + (frames - 1) // VAE_TEMPORAL


def video_frames(latents: int) -> int:
    return 1 + VAE_TEMPORAL * (latents - 1)


def token_grid(latents: int, height: int, width: int) -> tuple[int, int, int]:
    return latents, height // LATENT_PATCH, width // LATENT_PATCH


@dataclasses.dataclass(frozen=True)
class DiTStage:
    """One denoising stage (or the caching of a condition): `call` is each step's DiT forward, `steps` the steps
    of one run of it, `repeats` how often the run repeats (continuation segments, refinement windows), `cache_tokens`
    the condition tokens whose keys and values stay on the device through it."""

    name: str
    call: DiTCall
    steps: int
    repeats: int = 1
    cache_tokens: int = 0

    @property
    def size(self) -> str:
        t, h, w = self.call.grid
        return f"{self.call.batch} x {t}x{h}x{w} = {self.call.batch * self.call.tokens:,} tokens"


@dataclasses.dataclass(frozen=True)
class VAEStage:
    """A VAE pass over a `frames` x `height` x `width` video: a decode, or an encode (`encode`)."""

    name: str
    frames: int
    height: int
    width: int
    encode: bool = False
    repeats: int = 1


@dataclasses.dataclass(frozen=True)
class RunWork:
    """Every stage of a run, and the prompts encoded (with their negatives) before the DiT's first stage."""

    dit: tuple[DiTStage, ...]
    vae: tuple[VAEStage, ...]
    prompts: int
    text_length: int


def _guided_batch(sampling) -> int:
    return 2 if sampling.guided else 1


def _generation(plan, text_length: int, loras: bool) -> tuple[list[DiTStage], list[VAEStage]]:
    """t2v or i2v (whose one-frame image encode is negligible next to the decode)."""
    grid = token_grid(plan.latent_frames, plan.height, plan.width)
    lora = loras or plan.sampling.distill
    call = DiTCall(_guided_batch(plan.sampling), grid, text_length, plan.bsa, lora=lora)
    vae = [VAEStage("decode", plan.num_frames, plan.height, plan.width)]
    return [DiTStage("generation denoising", call, plan.sampling.num_inference_steps)], vae


def _continuation(plan, text_length: int, loras: bool, repeats: int = 1) -> tuple[list[DiTStage], list[VAEStage]]:
    cond_grid = token_grid(plan.cond_latents, plan.height, plan.width)
    noisy_grid = token_grid(plan.latent_frames - plan.cond_latents, plan.height, plan.width)
    cond_tokens = math.prod(cond_grid)
    lora = loras or plan.sampling.distill
    cache = DiTStage("cache condition", DiTCall(1, cond_grid, text_length, plan.bsa, return_kv=True, lora=lora), 1,
                     repeats)
    steps = plan.sampling.num_inference_steps
    denoise = DiTStage("continuation denoising",
                       DiTCall(_guided_batch(plan.sampling), noisy_grid, text_length, plan.bsa, cond_tokens=cond_tokens,
                               lora=lora),
                       steps, repeats, cache_tokens=cond_tokens)
    vae = [VAEStage("encode condition", plan.num_cond_frames, plan.height, plan.width, encode=True, repeats=repeats),
           VAEStage("decode", plan.num_frames, plan.height, plan.width, repeats=repeats)]
    return [cache, denoise], vae


def _refine(plan, text_length: int, repeats: int = 1) -> tuple[list[DiTStage], list[VAEStage]]:
    grid = token_grid(plan.latent_frames, plan.height, plan.width)
    # The truncated schedule (`pipelines.scheduler.start_at`): t_thresh itself, then the steps below it; with the
    # plain sigmas n * t_thresh + 1 of them (26 of 50).
    steps = plan.num_inference_steps
    if plan.t_thresh:
        steps = min(steps, int(plan.num_inference_steps * plan.t_thresh) + 1)
    dit = [DiTStage("refine denoising", DiTCall(1, grid, text_length, plan.bsa, lora=True), steps, repeats)]
    frames = video_frames(plan.latent_frames)
    vae = [VAEStage("refine encode", frames, plan.height, plan.width, encode=True, repeats=repeats),
           VAEStage("refine decode", frames, plan.height, plan.width, repeats=repeats)]
    return dit, vae


def _long_video_frames(plan) -> int:
    return plan.first.num_frames + plan.num_segments * (plan.segment.num_frames - plan.segment.num_cond_frames)


def run_work(stages, *, prompts: int, text_length: int, loras: bool = False) -> RunWork:
    """The work of a task planner's `TaskStages` (its `generation` and `refinement` plans, either None); `loras`:
    the user's LoRAs run in every stage (the distill and refinement LoRAs are counted where their stages use them)."""
    dit: list[DiTStage] = []
    vae: list[VAEStage] = []
    generation, refinement = stages.generation, stages.refinement
    kind = type(generation).__name__
    long_frames = None
    if generation is None:
        pass
    elif kind == "GenerationPlan":
        parts = _generation(generation, text_length, loras)
        dit += parts[0]
        vae += parts[1]
    elif kind == "ContinuationPlan":
        parts = _continuation(generation, text_length, loras)
        dit += parts[0]
        vae += parts[1]
    elif kind == "LongVideoPlan":
        for parts in (_generation(generation.first, text_length, loras),
                      _continuation(generation.segment, text_length, loras, repeats=max(generation.num_segments, 1))):
            dit += parts[0]
            vae += parts[1]
        long_frames = _long_video_frames(generation)
    else:
        raise TypeError(f"the memory plan does not know the stage plan {kind}; teach longcat_jax.memory.workloads it")
    kind = type(refinement).__name__
    if refinement is None:
        pass
    elif kind == "RefinePlan":
        parts = _refine(refinement, text_length)
        dit += parts[0]
        vae += parts[1]
    elif kind == "WindowedRefinePlan":
        frames = long_frames or refinement.window
        windows = max(1, math.ceil(max(frames - refinement.overlap, 1) / (refinement.window - refinement.overlap)))
        parts = _refine(refinement.first, text_length, repeats=windows)
        dit += parts[0]
        vae += parts[1]
    else:
        raise TypeError(f"the memory plan does not know the stage plan {kind}; teach longcat_jax.memory.workloads it")
    return RunWork(tuple(dit), tuple(vae), prompts, text_length)


def released_pipeline_work(*, text_length: int = 512, bsa: BSAParams | None = None) -> RunWork:
    """The released pipeline's largest stages: 480p t2v with guidance (2 x 24x30x52 tokens, 50 steps), its refinement
    to 704x1280 with the frames doubled (48x44x80 tokens, 26 steps, BSA), and their VAE passes."""
    generation = DiTStage("generation denoising", DiTCall(2, (24, 30, 52), text_length), 50)
    refine = DiTStage("refine denoising", DiTCall(1, (48, 44, 80), text_length, bsa, lora=True), 26)
    frames = video_frames(48)
    vae = (VAEStage("decode", 93, 480, 832), VAEStage("refine encode", frames, 704, 1280, encode=True),
           VAEStage("refine decode", frames, 704, 1280))
    return RunWork((generation, refine), vae, prompts=2, text_length=text_length)
