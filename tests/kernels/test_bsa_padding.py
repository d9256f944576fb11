"""Padding token grids to whole chunks (`kernels.padding`): its facts, the kernels' in-kernel key mask against them,
the selection of the real tokens alone, and the whole-chunk path left as it was.

The attention itself on padded grids is checked per backend in test_bsa_backends.py (`odd_grid_cases`).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import (
    BSAConfigError,
    BSAInputError,
    BSAParams,
    GridPadding,
    block_mask_from_indices,
    bsa_attention,
    bsa_selection,
    padded_chunk_grid,
    sparse_attention_chunked,
    to_chunk_order,
)
from tests.kernels.odd_grid_truth import block_of_each_token, real_token_means, real_token_selection

GRIDS = [  # (latent, chunk)
    ((24, 45, 80), (4, 4, 4)),  # 720p: rows only
    ((5, 6, 7), (4, 4, 4)),  # every axis
    ((3, 9, 10), (2, 4, 8)),
    ((7, 5, 3), (3, 2, 5)),  # chunk wider than the grid along W
    ((4, 8, 8), (4, 4, 4)),  # whole chunks: nothing to pad
]


def test_padded_grid_and_real_tokens_per_block():
    padding = GridPadding.of((24, 45, 80), (4, 4, 4))
    assert (padding.blocks, padding.padded, padding.needed) == ((6, 12, 20), (24, 48, 80), True)
    counts = padding.real_tokens_per_block().reshape(padding.blocks)
    assert np.all(counts[:, :11] == 64) and np.all(counts[:, 11] == 16)  # the last chunk row holds one real row
    assert padding.padded_fraction == pytest.approx(3 / 48)
    assert not GridPadding.of((4, 8, 8), (4, 4, 4)).needed
    assert padded_chunk_grid((1, 5, 9), (4, 4, 4)) == (1, 2, 3)
    with pytest.raises(BSAConfigError, match="three positive ints"):
        GridPadding.of((0, 8, 8), (4, 4, 4), what="queries")


@pytest.mark.parametrize("latent, chunk", GRIDS)
def test_pad_crop_and_the_real_token_mask_agree_with_the_coordinates(latent, chunk):
    padding = GridPadding.of(latent, chunk)
    x = jax.random.normal(jax.random.key(0), (2, math.prod(latent), 1, 3))
    padded = padding.pad(x)
    np.testing.assert_array_equal(padding.crop(padded), x)
    mask = padding.real_token_mask()  # chunk order
    chunked = np.asarray(to_chunk_order(padded, padding.padded, chunk))
    np.testing.assert_array_equal(chunked[:, ~mask], 0.0)  # padding is zeros
    # the real tokens of each block are those whose coordinates fall in it
    blocks, _ = block_of_each_token(latent, chunk)
    np.testing.assert_array_equal(mask.reshape(padding.num_blocks, -1).sum(1), np.bincount(blocks))
    np.testing.assert_array_equal(padding.real_tokens_per_block(), np.bincount(blocks))


@pytest.mark.parametrize("latent, chunk", GRIDS)
def test_the_kernels_key_mask_is_the_real_token_mask(latent, chunk):
    padding = GridPadding.of(latent, chunk)
    mask = padding.real_token_mask().reshape(padding.num_blocks, padding.block_size)
    positions = jnp.arange(padding.block_size, dtype=jnp.int32)

    def real_keys(block):
        conditions = padding.real_key_conditions(block, positions)
        return jnp.all(jnp.stack(conditions), axis=0) if conditions else jnp.ones_like(positions, bool)

    got = jax.jit(jax.vmap(real_keys))(jnp.arange(padding.num_blocks, dtype=jnp.int32))
    np.testing.assert_array_equal(got, mask)
    assert bool(padding.real_key_conditions(jnp.int32(0), positions)) == padding.needed


@pytest.mark.parametrize("latent, chunk", GRIDS[1:4])
def test_block_means_and_selection_are_those_of_the_real_tokens(latent, chunk):
    params = BSAParams(sparsity=0.5, chunk_3d_shape_q=chunk, chunk_3d_shape_k=chunk)
    q, k = (jax.random.normal(key, (1, math.prod(latent), 2, 16)) for key in jax.random.split(jax.random.key(1)))
    padding = GridPadding.of(latent, chunk)
    padded_means = to_chunk_order(padding.pad(q), padding.padded, chunk).reshape(
        1, padding.num_blocks, padding.block_size, 2, 16).mean(2).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(padding.real_means(padded_means), real_token_means(q, latent, chunk), rtol=1e-5,
                               atol=1e-6)
    indices, counts = bsa_selection(q, k, latent, latent, params)
    mask = block_mask_from_indices(indices, counts, padding.num_blocks)
    np.testing.assert_array_equal(mask, real_token_selection(q, k, latent, latent, params))


def test_whole_chunk_grids_take_no_padding_path():
    params = BSAParams(sparsity=0.5)
    q = jnp.ones((1, 4 * 8 * 8, 2, 16))

    def primitives(latent):
        jaxpr = jax.make_jaxpr(lambda q: bsa_attention(q, q, q, latent, latent, params, backend="reference"))(q)
        return str(jaxpr)

    assert " pad[" not in primitives((4, 8, 8))
    odd = jnp.ones((1, 4 * 7 * 8, 2, 16))
    jaxpr = jax.make_jaxpr(lambda q: bsa_attention(q, q, q, (4, 7, 8), (4, 7, 8), params, backend="reference"))(odd)
    assert " pad[" in str(jaxpr)


def test_chunked_call_checks_the_key_padding():
    padding = GridPadding.of((3, 5, 4), (4, 4, 4))  # padded to (4, 8, 4): 2 blocks of 64
    q = jax.random.normal(jax.random.key(2), (1, 128, 1, 16))
    indices = jnp.zeros((1, 1, 2, 1), jnp.int32)
    counts = jnp.ones((1, 1, 2), jnp.int32)
    with pytest.raises(BSAInputError, match="key_padding pads"):
        sparse_attention_chunked(q, q, q, indices, counts, 64, 64, key_padding=GridPadding.of((3, 5, 4), (4, 4, 2)),
                                 backend="reference")
    # all queries attend to key block 0 alone, whose real keys are the chunk order's first 3 frames x 4 rows x 4
    out = sparse_attention_chunked(q, q, q, indices, counts, 64, 64, key_padding=padding, backend="reference")
    chex.assert_shape(out, q.shape)
    real = padding.real_token_mask()[:64]
    logits = jnp.einsum("qd,kd->qk", q[0, :, 0], q[0, :64, 0][real]) / 4.0
    want = jax.nn.softmax(logits, axis=-1) @ q[0, :64, 0][real]
    np.testing.assert_allclose(out[0, :, 0], want, rtol=1e-5, atol=1e-6)
