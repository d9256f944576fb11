"""Text-to-video of several prompts at once: videos of one shape denoised as one batch through the DiT.

`batch_key` says which checked t2v plans may share a batch: the same size, frame count, steps, guidance, schedule
and BSA (prompts, negative prompts and seeds may differ). `run_t2v_batch` gives each plan the video `t2v.run_t2v`
gives it alone: each video's noise comes from its own seed, the text conditions are stacked on the batch axis (the
DiT's batch rows never mix), one sampling loop steps them all, and each video is decoded alone. Only the denoising
is shared; its activation memory grows with the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import jax.numpy as jnp

from longcat_jax.errors import InputError
from longcat_jax.pipelines.denoise import TextCondition
from longcat_jax.pipelines.options import GeneratedVideo
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.refine import run_refine
from longcat_jax.pipelines.request import RunSetup, TaskStages
from longcat_jax.pipelines.t2v import GenerationPlan, decode_video, denoise_generation, encode_generation_text
from longcat_jax.seeds import key_from_seed


def batch_key(plan: GenerationPlan) -> Hashable:
    """What t2v plans sharing a batch must have in common (everything the compiled step and the loop see)."""
    sampling = plan.sampling
    return (plan.height, plan.width, plan.num_frames, sampling.num_inference_steps, sampling.guidance_scale,
            sampling.distill, sampling.guided, plan.bsa)


def run_t2v_batch(pipe: LongCatPipeline, prompts: Sequence[str], plans: Sequence[GenerationPlan]) -> list[GeneratedVideo]:
    """The videos of checked t2v plans of one `batch_key`, one per (prompt, plan), denoised together."""
    if len(prompts) != len(plans) or not plans:
        raise InputError(f"a t2v batch needs one prompt per plan, got {len(prompts)} prompts and {len(plans)} plans")
    if len({batch_key(plan) for plan in plans}) != 1:
        raise InputError("a t2v batch needs plans of one size, frame count, step count, guidance and BSA; "
                         "group them by t2v_batch.batch_key")
    text = stack_text([encode_generation_text(pipe, prompt, plan) for prompt, plan in zip(prompts, plans)])
    latents = jnp.concatenate(  # [B, C, T, h, w]
        [pipe.noise(key_from_seed(plan.seed), plan.latent_frames, plan.height, plan.width) for plan in plans], axis=0
    )
    latents = denoise_generation(pipe, latents, text, plans[0], num_cond_latents=0, stage="t2v")
    videos = []
    for index in range(len(plans)):
        with pipe.recording_into(pipe.stats.branch()) as own:  # this video's decode (and refinement) on its own
            videos.append(GeneratedVideo(decode_video(pipe, latents[index : index + 1]), pipe.defaults.fps, stats=own))
    return videos


def stack_text(texts: Sequence[TextCondition]) -> TextCondition:
    """Text conditions of one video each ([1, 1, L, C] embeddings, [1, L] masks) as one of len(texts) videos."""
    negatives = [text.negative_embeddings for text in texts]
    if any(negative is None for negative in negatives):
        if any(negative is not None for negative in negatives):
            raise InputError("a t2v batch is guided for all its videos or for none")
        return TextCondition(jnp.concatenate([t.embeddings for t in texts]), jnp.concatenate([t.mask for t in texts]))
    return TextCondition(
        jnp.concatenate([t.embeddings for t in texts]),
        jnp.concatenate([t.mask for t in texts]),
        jnp.concatenate(negatives),
        jnp.concatenate([t.negative_mask for t in texts]),
    )


def run_t2v_tasks(pipe: LongCatPipeline, setups: Sequence[RunSetup], stages: Sequence[TaskStages]) -> list[GeneratedVideo]:
    """`--task t2v` of several checked runs of one `batch_key`: the clips denoised together, then each refined
    alone when its run asks for it (as `t2v.run_task` one at a time)."""
    clips = run_t2v_batch(pipe, [setup.prompt for setup in setups], [stage.generation for stage in stages])
    videos = []
    for clip, setup, stage in zip(clips, setups, stages):
        if stage.refinement is not None:
            with pipe.recording_into(clip.stats):
                refined = run_refine(pipe, clip.frames, setup.refine_prompt, stage.refinement)
            clip = dataclasses.replace(refined, stats=clip.stats)
        videos.append(clip)
    return videos
