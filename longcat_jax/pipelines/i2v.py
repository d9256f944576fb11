"""Image-to-video: the size is the bucket nearest the image's aspect ratio; the image is resized (Lanczos), encoded
to one latent frame that replaces latent frame 0 and stays clean (timestep 0, never stepped). Sampling as t2v.
`--task i2v` writes the video at the image's size (bicubic, as the original's i2v demo) unless
`--output-size generated`."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from longcat_jax.nan_guard import check_finite
from longcat_jax.pipelines.bsa import Stage, check_bsa_grids
from longcat_jax.pipelines.buckets import num_latent_frames, round_num_frames
from longcat_jax.pipelines.geometry import bucket_for, token_grid, warn_of_upscaled_input
from longcat_jax.pipelines.options import GeneratedVideo, GenerationOptions, PlanContext, Sampling, with_changes
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.refine import plan_refinement, run_refine
from longcat_jax.pipelines.request import RunSetup, TaskStages
from longcat_jax.pipelines.t2v import GenerationPlan, decode_video, denoise_generation, encode_generation_text
from longcat_jax.seeds import key_from_seed
from longcat_jax.video_io import resize_frames, to_model_input


def plan_i2v(image_size: tuple[int, int], options: GenerationOptions, context: PlanContext) -> GenerationPlan:
    """The i2v size is the `options.resolution` bucket nearest the image's (height, width); checks BSA with the
    condition frame. `options.height`/`width` are not used."""
    defaults = context.defaults
    height, width = bucket_for(image_size[0], image_size[1], defaults, options.resolution)
    warn_of_upscaled_input("the --image", image_size, (height, width))
    num_frames = round_num_frames(options.num_frames or defaults.num_frames)
    grid = token_grid(num_latent_frames(num_frames), height, width)
    bsa = context.stage_bsa(Stage.I2V, options.bsa, grid[0])
    check_bsa_grids(bsa, grid, num_cond_latents=1)
    return GenerationPlan(height, width, num_frames, Sampling.resolve(defaults, options), bsa, options.seed)


def run_i2v(pipe: LongCatPipeline, image: np.ndarray, prompt: str, plan: GenerationPlan) -> GeneratedVideo:
    """The video of a checked i2v plan, starting from `image` (uint8 [H, W, 3])."""
    text = encode_generation_text(pipe, prompt, plan)
    noise_key, cond_key = jax.random.split(key_from_seed(plan.seed))
    with pipe.stats.stage("encode image"):
        pixels = to_model_input(resize_frames(image[None], plan.height, plan.width, "lanczos"))  # [1, 3, 1, H, W]
        cond = pipe.encode_frames(pixels, cond_key)  # [1, C, 1, h, w]
        check_finite(cond, "i2v image encode (VAE)")
    latents = pipe.noise(noise_key, plan.latent_frames, plan.height, plan.width)
    latents = latents.at[:, :, :1].set(cond)
    latents = denoise_generation(pipe, latents, text, plan, num_cond_latents=1, stage="i2v")
    return GeneratedVideo(decode_video(pipe, latents), pipe.defaults.fps)


def generate_i2v(pipe: LongCatPipeline, image: np.ndarray, prompt: str, options: GenerationOptions | None = None,
                 **changes) -> GeneratedVideo:
    """A video starting from `image` (uint8 [H, W, 3]); the size is the bucket nearest its aspect ratio.
    Keywords replace fields of `options`."""
    options = with_changes(options, GenerationOptions, changes)
    return run_i2v(pipe, image, prompt, plan_i2v(image.shape[:2], options, pipe.plan_context))


def plan_task(setup: RunSetup) -> TaskStages:
    """`--task i2v`: --image is the first frame; with --refine it is the refinement's condition too."""
    image = setup.inputs.image
    generation = plan_i2v(image.shape[:2], setup.generation, setup.context)
    refinement = plan_refinement(setup, generation.size, generation.num_frames, num_cond_frames=1)
    num_frames, height, width = (refinement or generation).shape
    if setup.request.output_size == "input":
        height, width = image.shape[:2]
    return TaskStages(generation, refinement, (num_frames, height, width))


def run_task(pipe: LongCatPipeline, setup: RunSetup, stages: TaskStages) -> GeneratedVideo:
    """The video of the planned stages, resized (bicubic) to `stages.output_shape` (the image's size, by default)."""
    video = run_i2v(pipe, setup.inputs.image, setup.prompt, stages.generation)
    if stages.refinement is not None:
        video = run_refine(pipe, video.frames, setup.refine_prompt, stages.refinement, image=setup.inputs.image)
    _, height, width = stages.output_shape
    return dataclasses.replace(video, frames=resize_frames(video.frames, height, width, "bicubic"))
