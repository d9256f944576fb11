"""The sampler and a whole generation on 8 CPU devices (longcat_jax.sharding) against one device.

conftest.py asks XLA for 8 host devices.
"""

import dataclasses

import numpy as np
import pytest

from longcat_jax.models.dit.loading import random_dit
from longcat_jax.pipelines.denoise import Denoiser, TextCondition, sample
from longcat_jax.pipelines.i2v import generate_i2v
from longcat_jax.pipelines.options import GenerationOptions
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.scheduler import make_schedule
from longcat_jax.sharding import make_mesh, shard_dit, shard_pipeline
from tests.sharding.test_sharding_dit import GPU_CONFIG, GPU_TOL, assert_close, gpu_count, needs_8, tiny_config


def text_condition(seed: int) -> TextCondition:
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((2, 1, 12, 16)).astype(np.float32)
    mask = (np.arange(12)[None] < np.array([[9], [3]])).astype(np.int32)
    return TextCondition(embeddings[:1], mask[:1], embeddings[1:], mask[1:])


@pytest.fixture(scope="module")
def denoisers():
    single = random_dit(tiny_config())
    sharded = random_dit(tiny_config())
    shard_dit(sharded, make_mesh(8))
    return Denoiser(single), Denoiser(sharded)


@needs_8
def test_guided_sampling_with_condition_frames_gives_the_same_latents(denoisers):
    latents = np.random.default_rng(0).standard_normal((1, 16, 8, 4, 8)).astype(np.float32)
    text = text_condition(1)
    results = [
        sample(denoiser, latents, make_schedule(2), text, guidance_scale=4.0, guided=True, num_cond_latents=2)
        for denoiser in denoisers
    ]
    assert len(results[1].sharding.device_set) == 8
    assert_close(results[1], results[0])


@needs_8
def test_sampling_after_a_kv_cache_gives_the_same_latents(denoisers):
    rng = np.random.default_rng(2)
    cond = rng.standard_normal((1, 16, 2, 4, 8)).astype(np.float32)
    latents = rng.standard_normal((1, 16, 6, 4, 8)).astype(np.float32)
    text = text_condition(3)
    results = []
    for denoiser in denoisers:
        cache = denoiser.condition_kv(cond, text_length=12)
        results.append(sample(denoiser, latents, make_schedule(2), text, guidance_scale=4.0, guided=True,
                              num_cond_latents=2, kv_cache=cache))
    assert_close(results[1], results[0])


@needs_8
def test_i2v_on_the_mesh_makes_the_same_video():
    """Text encoder, VAE encode of the image, guided sampling with a condition frame and the VAE decode in strips,
    with the built-in model's 2 heads padded to 8 for the attention."""
    image = np.random.default_rng(4).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    videos = []
    for devices in (None, 8):
        pipe = LongCatPipeline.builtin()
        pipe.defaults = dataclasses.replace(pipe.defaults, size_scale=0.1)
        if devices:
            assert shard_pipeline(pipe, make_mesh(devices)) is not None
        options = GenerationOptions(num_frames=5, num_inference_steps=2, seed=5)
        videos.append(generate_i2v(pipe, image, "a red car", options).frames)
    assert videos[0].shape == videos[1].shape == (5, 64, 64, 3)
    # uint8 frames: a float32 rounding difference may flip a value by one step.
    assert np.abs(videos[1].astype(int) - videos[0]).max() <= 1


def test_one_device_leaves_the_pipeline_alone():
    pipe = LongCatPipeline.builtin()
    assert shard_pipeline(pipe, make_mesh(1)) is None
    assert pipe.mesh is None and pipe.dit.context_parallel is None


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() < 2, reason="needs at least 2 GPUs")
def test_gpus_guided_sampling_with_condition_frames_gives_the_same_latents():
    single, sharded = random_dit(GPU_CONFIG), random_dit(GPU_CONFIG)
    shard_dit(sharded, make_mesh(gpu_count()))
    latents = np.random.default_rng(7).standard_normal((1, 16, 12, 16, 16)).astype(np.float32)
    text = text_condition(8)
    results = [
        sample(Denoiser(dit), latents, make_schedule(3), text, guidance_scale=4.0, guided=True, num_cond_latents=4)
        for dit in (single, sharded)
    ]
    assert_close(results[1], results[0], GPU_TOL)
