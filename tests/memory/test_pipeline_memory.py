"""A memory plan applied to the pipeline: the text encoder on the CPU, the DiT streamed from pinned host memory in
token chunks, the VAE's tiles, and the summary's memory lines; the video equals the default pipeline's."""

import jax.numpy as jnp
import numpy as np

from longcat_jax.memory.plan import Budget, Placement, forced_plan
from longcat_jax.memory.run import builtin_models
from longcat_jax.memory.streaming import StreamedDiT
from longcat_jax.memory.workloads import RunWork
from longcat_jax.models.vae.tiling import TilingConfig
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.t2v import generate_t2v

SMALL = dict(height=64, width=64, num_frames=9, num_inference_steps=2, seed=3)


def _plan(placement: Placement):
    work = RunWork((), (), prompts=0, text_length=64)
    return forced_plan(work, builtin_models(dtype=jnp.float32, quantize=None), Budget(2**30, "a test", "cpu", True),
                       placement)


def test_streamed_chunked_pipeline_makes_the_default_pipelines_video():
    want = generate_t2v(LongCatPipeline.builtin(), "a cat", **SMALL).frames
    plan = _plan(Placement(text_on_cpu=True, dit_streamed=True, chunk_tokens=16))
    pipe = LongCatPipeline.builtin(memory_plan=plan)
    got = generate_t2v(pipe, "a cat", **SMALL).frames
    np.testing.assert_array_equal(got, want)
    assert isinstance(pipe.use_dit(bsa=None).streamed, StreamedDiT)
    assert pipe.dit.token_chunking == 16
    summary = pipe.stats.summary()
    assert "memory budget 1.00 GiB (a test)" in summary
    assert "DiT weights streamed per denoising step" in summary


def test_the_plans_vae_tile_is_applied():
    pipe = LongCatPipeline.builtin(memory_plan=_plan(Placement(vae_tile=128)))
    assert pipe.vae.tiling == TilingConfig.square(128)
    assert LongCatPipeline.builtin().vae.tiling == TilingConfig()
