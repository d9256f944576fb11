"""Cross attention and FFN in token chunks (`LongCatDiT.set_token_chunking`) give the unchunked output."""

import jax
import numpy as np
import pytest
from flax import nnx

from longcat_jax.errors import ConfigError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.block import frame_group
from tests.memory.dit_inputs import inputs, tiny_dit


def _assert_same(got, want):
    """Bit-exact, or within 1e-6 relative L2 in float32 (the issue's bound: a GEMM over a chunk of rows may sum in
    another order than over all of them)."""
    got, want = np.asarray(got), np.asarray(want)
    if not np.array_equal(got, want):
        assert rel_l2(got, want) <= 1e-6


def _call(dit, *args, **kwargs):
    return nnx.jit(lambda m, *a: m(*a, **kwargs))(dit, *args)


@pytest.mark.parametrize(
    ("chunk_tokens", "num_cond_latents"),
    # 64 tokens: 1 frame of 8x8; 128: 2 frames; 100: 1 frame (whole frames only); 1: 1 frame (at least one)
    [(64, 0), (128, 3), (100, 1), (1, 0)],
)
def test_chunked_dit_equals_unchunked(chunk_tokens, num_cond_latents):
    dit = tiny_dit()
    args = inputs(dit)
    want = _call(dit, *args, num_cond_latents=num_cond_latents)
    dit.set_token_chunking(chunk_tokens)
    got = _call(dit, *args, num_cond_latents=num_cond_latents)
    _assert_same(got, want)


def test_chunked_dit_equals_unchunked_with_a_kv_cache():
    """Continuation: condition frames cached, then the noisy frames (every one of them gets text)."""
    dit = tiny_dit()
    latents, timestep, text, mask = inputs(dit)
    cond, noisy = latents[:, :, :2], latents[:, :, 2:]
    _, cache = _call(dit, cond, timestep * 0, text, None, return_kv=True, skip_crs_attn=True)
    want = _call(dit, noisy, timestep, text, mask, num_cond_latents=2, kv_cache=cache)
    dit.set_token_chunking(64)
    _, cache_chunked = _call(dit, cond, timestep * 0, text, None, return_kv=True, skip_crs_attn=True)
    got = _call(dit, noisy, timestep, text, mask, num_cond_latents=2, kv_cache=cache)
    _assert_same(got, want)
    jax.tree.map(_assert_same, cache_chunked, cache)


def test_chunking_is_a_setting_of_the_blocks():
    dit = tiny_dit()
    assert dit.token_chunking is None
    dit.set_token_chunking(4096)
    assert all(block.chunk_tokens == 4096 for block in dit.blocks)
    dit.set_token_chunking(None)
    assert dit.token_chunking is None
    for bad in (0, -1, 2.5, True, "64"):
        with pytest.raises(ConfigError, match="chunk_tokens"):
            dit.set_token_chunking(bad)


@pytest.mark.parametrize(
    ("frames", "per_frame", "chunk", "group"),
    [(48, 3520, None, 48), (48, 3520, 32768, 8), (48, 3520, 8192, 2), (48, 3520, 100, 1), (7, 10, 30, 1),
     (12, 10, 60, 6), (12, 10, 1000, 12)],
)
def test_frame_groups_are_whole_divisors_within_the_chunk(frames, per_frame, chunk, group):
    assert frame_group(frames, per_frame, chunk) == group
