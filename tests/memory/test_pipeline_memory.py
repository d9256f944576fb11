"""A memory plan applied to the pipeline: the text encoder on the CPU, the DiT streamed from pinned host memory in
token chunks, the VAE's tiles, and the summary's memory lines; the video is the default pipeline's (to one level of uint8)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax.memory.plan import Budget, MemoryBudgetError, Placement, forced_plan
from longcat_jax.memory.run import builtin_models, pipeline_memory_plan
from longcat_jax.memory.streaming import StreamedDiT
from longcat_jax.memory.workloads import RunWork
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.vae.tiling import TilingConfig
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.t2v import generate_t2v
from tests.helpers.fixture_checkpoint import link_fixture_checkpoint

SMALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=1.0, seed=3)


def _plan(placement: Placement):
    work = RunWork((), (), prompts=0, text_length=64)
    return forced_plan(work, builtin_models(dtype=jnp.float32, quantize=None), Budget(2**30, "a test", "cpu", True),
                       placement)


def test_streamed_chunked_pipeline_makes_the_default_pipelines_video():
    want = generate_t2v(LongCatPipeline.builtin(), "a cat", **SMALL).frames
    plan = _plan(Placement(text_on_cpu=True, dit_streamed=True, chunk_tokens=4))
    pipe = LongCatPipeline.builtin(memory_plan=plan)
    got = generate_t2v(pipe, "a cat", **SMALL).frames
    # The chunked GEMMs and the step's glue outside one compiled function round differently in the last float32
    # bits (tests/memory/test_streaming.py: within 1e-6); uint8 frames then differ by one level at a few pixels.
    difference = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.01
    assert isinstance(pipe.use_dit(bsa=None).streamed, StreamedDiT)
    assert pipe.dit.token_chunking == 4
    summary = pipe.stats.summary()
    assert "memory budget 1.00 GiB (a test)" in summary
    assert "DiT weights streamed per denoising step" in summary


def test_the_plans_vae_tile_is_applied():
    pipe = LongCatPipeline.builtin(memory_plan=_plan(Placement(vae_tile=128)))
    assert pipe.vae.tiling == TilingConfig.square(128)
    assert LongCatPipeline.builtin().vae.tiling == TilingConfig()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fixtures_dir) -> Path:
    """A checkpoint folder laid out like the download: the fixture parts and a tokenizer."""
    return link_fixture_checkpoint(tmp_path_factory.mktemp("checkpoint"), fixtures_dir, distill_lora=False)


def test_a_planned_checkpoint_pipeline_loads_the_dit_after_the_prompts(checkpoint):
    want = generate_t2v(LongCatPipeline.from_pretrained(checkpoint, dtype=jnp.float32), "a cat", **SMALL).frames
    pipe = LongCatPipeline.from_pretrained(checkpoint, dtype=jnp.float32,
                                           memory_plan=_plan(Placement(dit_streamed=True, chunk_tokens=4)))
    assert pipe._dit is None  # not loaded yet
    text = pipe.encode_text("a cat")
    pipe.release_text_encoder()
    assert pipe._dit is None and text.embeddings.shape[-1] == pipe.dit_config.caption_channels
    got = generate_t2v(pipe, "a cat", **SMALL).frames
    assert {leaf.sharding.memory_kind for leaf in jax.tree.leaves(nnx.state(pipe.dit.blocks))} == {"pinned_host"}
    assert any(stage.name == "load DiT" for stage in pipe.stats.stages)
    difference = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.01


def test_a_budget_for_the_released_pipeline_is_refused_before_loading(checkpoint, monkeypatch):
    """`from_pretrained(max_device_memory=...)` plans the released pipeline's stages (720p refinement included);
    where they cannot fit it refuses before any model loads."""
    from longcat_jax.pipelines import pipeline as pipeline_module

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    for loader in ("load_dit", "load_vae", "load_text_encoder"):
        monkeypatch.setattr(pipeline_module, loader, fail)
    with pytest.raises(MemoryBudgetError, match="refine denoising") as info:
        LongCatPipeline.from_pretrained(checkpoint, dtype=jnp.float32, max_device_memory="64MiB")
    assert info.value.smallest_budget > 64 * 2**20


def test_a_pipelines_budget_counts_the_loras_it_applies(tmp_path, fixtures_dir):
    """`LongCatPipeline.from_pretrained(loras=..., max_device_memory=...)`: its user LoRAs are in every stage's
    weights, in the DiT's dtype, as the CLI's plan counts them."""
    root = link_fixture_checkpoint(tmp_path, fixtures_dir)
    config = DiTConfig.from_json(root / "dit" / "config.json")
    budget = Budget(2**50, "a test", "cpu", True)  # the released sizes' activations on the fixture DiT: a lot
    plain = pipeline_memory_plan(root, None, dit_config=config, dtype=jnp.bfloat16, quantize=None, budget=budget)
    with_lora = pipeline_memory_plan(root, None, dit_config=config, dtype=jnp.bfloat16, quantize=None, budget=budget,
                                     user_lora_elements=10**6)
    dit_stages = [(a, b) for a, b in zip(plain.stages, with_lora.stages, strict=True) if "denoising" in a.name]
    assert dit_stages and all(b.weights - a.weights == 2 * 10**6 for a, b in dit_stages)
