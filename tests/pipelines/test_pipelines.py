"""Every task end to end on the built-in tiny models (CPU): shapes, seeds, BSA on and off, one compile per shape.

The pipeline is built once for the module and works at 1/10 of the real bucket sizes, so square inputs land on
64x64 (generation) and 128x128 (refinement); the shapes are shared between tests to keep compilations few.
"""

import dataclasses
import logging

import jax
import numpy as np
import pytest

from kernels import BSAParams
from longcat_jax.errors import InputError
from longcat_jax.pipelines import denoise, long_video
from longcat_jax.pipelines.bsa import check_bsa_grids
from longcat_jax.pipelines.continuation import generate_continuation, join_continuation, plan_continuation
from longcat_jax.pipelines.denoise import sample
from longcat_jax.pipelines.geometry import bucket_for
from longcat_jax.pipelines.i2v import generate_i2v, plan_i2v
from longcat_jax.pipelines.long_video import generate_long_video, plan_long_video
from longcat_jax.pipelines.options import GenerationOptions, RefineOptions
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.refine import generate_refine, plan_refine
from longcat_jax.pipelines.scheduler import make_schedule
from longcat_jax.pipelines.t2v import generate_t2v, plan_t2v

SIZE = GenerationOptions(height=64, width=64, num_frames=5, num_inference_steps=2)
BSA_2x2x2 = BSAParams(sparsity=0.5, chunk_3d_shape_q=(2, 2, 2), chunk_3d_shape_k=(2, 2, 2))


@pytest.fixture(scope="module")
def pipe() -> LongCatPipeline:
    pipe = LongCatPipeline.builtin()
    pipe.defaults = dataclasses.replace(pipe.defaults, size_scale=0.1, num_cond_frames=1, refine_inference_steps=4)
    return pipe


@pytest.fixture(scope="module")
def t2v_frames(pipe) -> np.ndarray:
    return generate_t2v(pipe, "A red car drives along a road", dataclasses.replace(SIZE, seed=1)).frames


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)


def test_t2v_shape_and_seed_determinism(pipe, t2v_frames):
    assert t2v_frames.shape == (5, 64, 64, 3) and t2v_frames.dtype == np.uint8
    # keywords name option fields, as the README's snippet passes them
    again = generate_t2v(pipe, "A red car drives along a road", height=64, width=64, num_frames=5, num_inference_steps=2,
                         seed=1).frames
    other = generate_t2v(pipe, "A red car drives along a road", SIZE, seed=2).frames
    np.testing.assert_array_equal(again, t2v_frames)
    assert np.abs(other.astype(int) - t2v_frames).mean() > 1.0


def test_guidance_and_distill_change_the_result(pipe, t2v_frames):
    unguided = generate_t2v(pipe, "A red car drives along a road", dataclasses.replace(SIZE, seed=1, guidance_scale=1.0))
    distilled = generate_t2v(pipe, "A red car drives along a road", dataclasses.replace(SIZE, seed=1, distill=True))
    unguided, distilled = unguided.frames, distilled.frames
    assert np.abs(unguided.astype(int) - t2v_frames).mean() > 0.5
    assert np.abs(distilled.astype(int) - unguided).mean() > 0.5


def test_step_compiles_once_per_shape(pipe):
    text = pipe.encode_text("A dog jumps into a lake", "")
    denoiser = pipe.use_dit(bsa=None)
    latents = pipe.noise(jax.random.key(3), 3, 48, 80)  # a shape no other test uses
    before = denoise._denoise_step._cache_size()
    compiles = []

    def on_event(event, _seconds, **_):
        if event.endswith("backend_compile_duration"):
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        sample(denoiser, latents, make_schedule(3), text, guidance_scale=4.0, guided=True)
        assert denoise._denoise_step._cache_size() == before + 1
        compiles.clear()
        sample(denoiser, latents, make_schedule(5), text, guidance_scale=6.0, guided=True)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert denoise._denoise_step._cache_size() == before + 1
    assert compiles == []


def test_bsa_on_and_off(pipe, t2v_frames):
    options = dataclasses.replace(SIZE, seed=1, bsa=BSA_2x2x2)
    on = generate_t2v(pipe, "A red car drives along a road", options).frames
    on_again = generate_t2v(pipe, "A red car drives along a road", options).frames
    assert on.shape == t2v_frames.shape
    np.testing.assert_array_equal(on, on_again)
    assert np.abs(on.astype(int) - t2v_frames).mean() > 0.1
    assert pipe.dit.bsa == BSA_2x2x2


def test_i2v_bucket_shape_and_seed(pipe, image):
    options = GenerationOptions(num_frames=5, num_inference_steps=2, seed=4)
    video = generate_i2v(pipe, image, "A cat walks", options)
    again = generate_i2v(pipe, image, "A cat walks", options)
    assert video.frames.shape == (5, 64, 64, 3) and video.fps == 15.0
    np.testing.assert_array_equal(video.frames, again.frames)


def test_inputs_far_smaller_than_their_bucket_are_warned_of(pipe, caplog):
    """A thumbnail conditions the video as a blur: warned of by name before any compute; an input near its bucket's
    size is not."""
    options = GenerationOptions(num_frames=5, num_cond_frames=1)
    with caplog.at_level(logging.WARNING, logger="longcat_jax.pipelines.geometry"):
        plan = plan_i2v((4, 4), options, pipe.plan_context)
        plan_continuation((6, 10), 5, options, pipe.plan_context)
    bucket = f"{plan.width}x{plan.height} bucket"
    assert f"the --image is 4x4, upscaled {min(plan.height, plan.width) / 4:.0f}x to the {bucket}" in caplog.text
    assert "the --video's frame is 10x6, upscaled" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longcat_jax.pipelines.geometry"):
        plan_i2v((plan.height // 2, plan.width // 2), options, pipe.plan_context)
        plan_long_video(LONG, 1, pipe.plan_context)
    assert "upscaled" not in caplog.text


def test_continuation_and_join(pipe, t2v_frames):
    result = generate_continuation(pipe, t2v_frames, "A red car",
                                   GenerationOptions(num_frames=5, num_cond_frames=1, num_inference_steps=2, seed=5))
    assert result.frames.shape == (5, 64, 64, 3)
    joined = join_continuation(t2v_frames, result.frames, 1)
    assert joined.shape == (5 + 4, 64, 64, 3)
    np.testing.assert_array_equal(joined[:5], t2v_frames)


LONG = GenerationOptions(height=64, width=64, num_frames=5, num_cond_frames=1, num_inference_steps=2, seed=6)


def test_long_video_makes_its_segments_at_the_asked_resolution(pipe):
    wide = dataclasses.replace(LONG, width=128)  # a 1:2 clip: the 480p and 720p buckets differ
    for resolution in ("480p", "720p"):
        plan = plan_long_video(dataclasses.replace(wide, resolution=resolution), 2, pipe.plan_context)
        assert (plan.segment.height, plan.segment.width) == bucket_for(64, 128, pipe.defaults, resolution)
        assert (plan.first.height, plan.first.width) == (64, 128)
    assert bucket_for(64, 128, pipe.defaults, "480p") != bucket_for(64, 128, pipe.defaults, "720p")


def test_long_video_frame_count(pipe):
    video = generate_long_video(pipe, "A red car", LONG, num_segments=2)
    assert video.frames.shape == (5 + 2 * 4, 64, 64, 3)


def test_long_video_runs_each_segment_on_its_own_prompt(pipe, monkeypatch):
    """The original's interactive video demo: the first clip on the prompt, each continuation on its segment's."""
    asked = []
    real = long_video.run_continuation
    monkeypatch.setattr(long_video, "run_continuation", lambda p, video, prompt, plan: asked.append(prompt) or real(
        p, video, prompt, plan))
    video = generate_long_video(pipe, "A red car", LONG, num_segments=2, segment_prompts=("It turns", "It stops"))
    assert asked == ["It turns", "It stops"] and video.frames.shape == (5 + 2 * 4, 64, 64, 3)
    asked.clear()
    generate_long_video(pipe, "A red car", LONG, num_segments=1)
    assert asked == ["A red car"]
    with pytest.raises(InputError, match="1 --segment-prompt for 2 segments.*one a segment"):
        plan_long_video(LONG, 2, pipe.plan_context, ("It turns",))


def test_refine_doubles_frames_with_bsa(pipe, t2v_frames):
    # The bucket for 64x64 would be 128x128 at this scale; 64x64 (a multiple of 64) keeps the VAE cheap.
    assert plan_refine((64, 64), 5, RefineOptions(), pipe.plan_context).height == 128
    result = generate_refine(pipe, t2v_frames, "A red car", RefineOptions(seed=7, size=(64, 64)))
    assert result.frames.shape == (10, 64, 64, 3) and result.fps == 30.0
    assert pipe.dit.bsa == pipe.dit.config.bsa_params  # refinement runs block-sparse


def test_refine_spatial_only_with_image_condition(pipe, t2v_frames, image):
    options = RefineOptions(spatial_only=True, seed=8, size=(64, 64))
    result = generate_refine(pipe, t2v_frames, "A red car", options, image=image)
    assert result.frames.shape == (5, 64, 64, 3) and result.fps == 15.0


def test_refine_padding_matches_the_original_rule(pipe):
    # 93 stage-1 frames doubled to 186 with a 26-frame condition (the long-video windows): 8 condition latents
    # (3 frames added in front), 40 noisy latents for the other 160 frames; without a condition 186 frames
    # become 48 latents after 6 padding frames.
    options = RefineOptions(size=(704, 1280), bsa=None)
    plan = plan_refine((480, 832), 93, options, pipe.plan_context, num_cond_frames=26)
    assert (plan.cond_latents, plan.cond_frames_added, plan.noise_latents, plan.noise_frames_added) == (8, 3, 40, 0)
    plan = plan_refine((480, 832), 93, options, pipe.plan_context)
    assert (plan.cond_latents, plan.noise_latents, plan.noise_frames_added, plan.num_frames) == (0, 48, 6, 186)


def test_refusals_before_compute(pipe):
    with pytest.raises(InputError, match=r"unknown GenerationOptions field\(s\) \['sead'\]"):
        generate_t2v(pipe, "A red car", sead=1)
    with pytest.raises(InputError, match="multiples of 16"):
        plan_t2v(GenerationOptions(height=100, width=208, num_frames=13, bsa=None), pipe.plan_context)
    balanced = BSAParams()
    plan_t2v(GenerationOptions(height=128, width=208, num_frames=13, bsa=balanced), pipe.plan_context)  # 13 wide: padded
    with pytest.raises(InputError, match="BSA cannot run"):
        check_bsa_grids(balanced, (4, 8, 8), num_cond_latents=4)  # every frame a condition: nothing to generate
    check_bsa_grids(balanced, (4, 8, 8), num_cond_latents=4, kv_cache=True)


def test_guided_condition_cache_of_a_batch_is_doubled_once_for_all_steps():
    class RecordingDenoiser:
        def __init__(self):
            self.caches = []

        def step(self, latents, *_, kv_cache, **__):
            self.caches.append(kv_cache)
            return latents

    latents = jax.numpy.zeros((2, 4, 3, 8, 8))  # two videos
    cache = tuple(jax.random.normal(key, (2, 2, 5, 6)) for key in jax.random.split(jax.random.key(0)))  # [depth, B, ..]
    for guided, batch in ((True, 4), (False, 2)):
        denoiser = RecordingDenoiser()
        sample(denoiser, latents, make_schedule(3), None, guided=guided, kv_cache=cache)
        assert len(denoiser.caches) == 3
        assert all(c is denoiser.caches[0] for c in denoiser.caches)  # the same arrays in every step
        for got, given in zip(denoiser.caches[0], cache):
            assert got.shape[1] == batch
            np.testing.assert_array_equal(got[:, :2], given)  # unconditional branch first, as the step stacks them
            np.testing.assert_array_equal(got[:, batch - 2:], given)
    shared = tuple(c[:, :1] for c in cache)  # one cache for every video passes as it is
    assert denoise.guided_kv_cache(shared, 2, True) is shared


def test_step_refuses_a_cache_of_another_batch(pipe):
    text = pipe.encode_text("A dog jumps into a lake", "")
    denoiser = pipe.use_dit(bsa=None)
    latents = pipe.noise(jax.random.key(3), 1, 32, 32)
    videos = jax.numpy.concatenate([latents, latents])  # two videos: a guided step's DiT input holds four
    cache = tuple(jax.numpy.zeros((pipe.dit.config.depth, 2, 4, 8)) for _ in range(2))
    with pytest.raises(InputError, match="kv_cache holds 2 videos, the step's DiT input 4; pass the cache through"):
        denoiser.step(videos, text, 900.0, 0.9, 0.8, guided=True, num_cond_latents=1, kv_cache=cache)
