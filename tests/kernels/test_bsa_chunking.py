"""The one-pass reorder + block means (`pallas_chunking.chunk_and_pool`) against the two XLA steps it replaces, and the
backward's reorder of do with delta (`pallas_chunking.chunk_with_delta`) against reorder, then rowsum(out * do)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import BSAInputError, to_chunk_order
from kernels.pallas_chunking import chunk_and_pool, chunk_with_delta
from kernels.selection import pool_blocks
from kernels.sparse_attention import backward_delta

CASES = [  # (latent, chunk, batch, heads, head_dim)
    ((4, 8, 12), (4, 4, 4), 2, 3, 64),
    ((8, 4, 8), (8, 4, 4), 1, 2, 128),
    ((2, 4, 6), (1, 2, 2), 1, 1, 64),
]


def _check(latent, chunk, b, h, d, interpret):
    x = jax.random.normal(jax.random.key(0), (b, int(np.prod(latent)), h, d), jnp.float32).astype(jnp.bfloat16)
    chunked, pooled = chunk_and_pool(x, latent, chunk, interpret=interpret)
    size = int(np.prod(chunk))
    chex.assert_shape(pooled, (b, h, x.shape[1] // size, d))
    chex.assert_type((chunked, pooled), (jnp.bfloat16, jnp.float32))
    want = to_chunk_order(x, latent, chunk)
    np.testing.assert_array_equal(np.asarray(chunked, np.float32), np.asarray(want, np.float32))
    np.testing.assert_allclose(pooled, pool_blocks(want, size), rtol=1e-5, atol=1e-6)


def _check_delta(latent, chunk, b, h, d, interpret):
    do, out = (jax.random.normal(key, (b, int(np.prod(latent)), h, d), jnp.float32)
               for key in jax.random.split(jax.random.key(3)))
    do_chunked, delta = chunk_with_delta(do, out, latent, chunk, jnp.bfloat16, interpret=interpret)
    chex.assert_type((do_chunked, delta), (jnp.bfloat16, jnp.float32))
    want_do = to_chunk_order(do, latent, chunk)
    np.testing.assert_array_equal(np.asarray(do_chunked, np.float32),
                                  np.asarray(want_do.astype(jnp.bfloat16), np.float32))
    want_delta = backward_delta(to_chunk_order(out, latent, chunk), want_do)  # [B, H, S]
    np.testing.assert_allclose(delta, want_delta, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("latent, chunk, b, h, d", CASES)
def test_interpret_matches_reorder_then_pool(latent, chunk, b, h, d):
    _check(latent, chunk, b, h, d, interpret=True)


@pytest.mark.parametrize("latent, chunk, b, h, d", CASES)
def test_interpret_do_and_delta_match_reorder_then_rowsum(latent, chunk, b, h, d):
    _check_delta(latent, chunk, b, h, d, interpret=True)


def test_do_and_delta_refuse_an_output_of_another_shape():
    do = jnp.zeros((1, 128, 2, 64), jnp.bfloat16)
    with pytest.raises(BSAInputError, match=r"output \(1, 128, 2, 32\) and its cotangent \(1, 128, 2, 64\)"):
        chunk_with_delta(do, jnp.zeros((1, 128, 2, 32), jnp.bfloat16), (2, 8, 8), (2, 4, 4), jnp.bfloat16,
                         interpret=True)


@pytest.mark.gpu
@pytest.mark.parametrize("latent, chunk, b, h, d", CASES[:2])
def test_gpu_matches_reorder_then_pool(latent, chunk, b, h, d):
    _check(latent, chunk, b, h, d, interpret=False)


@pytest.mark.gpu
@pytest.mark.parametrize("latent, chunk, b, h, d", CASES[:2])
def test_gpu_do_and_delta_match_reorder_then_rowsum(latent, chunk, b, h, d):
    _check_delta(latent, chunk, b, h, d, interpret=False)


def test_gradients_are_those_of_reorder_then_pool():
    latent, chunk = (4, 4, 8), (2, 2, 4)
    x = jax.random.normal(jax.random.key(1), (1, 128, 2, 64), jnp.float32)
    weights = [jax.random.normal(key, shape) for key, shape in
               zip(jax.random.split(jax.random.key(2)), ((1, 128, 2, 64), (1, 2, 8, 64)))]

    def loss(fn):
        def value(x):
            chunked, pooled = fn(x)
            return jnp.sum(chunked * weights[0]) + jnp.sum(pooled * weights[1])
        return jax.grad(value)(x)

    got = loss(lambda x: chunk_and_pool(x, latent, chunk, interpret=True))
    want = loss(lambda x: (to_chunk_order(x, latent, chunk), pool_blocks(to_chunk_order(x, latent, chunk), 16)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
