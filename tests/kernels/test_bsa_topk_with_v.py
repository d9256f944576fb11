"""The top-k and V's e4m3 pass in one launch (`pallas_topk_with_v`) against the two kernels it merges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import pallas_chunking, pallas_topk, pallas_topk_with_v
from tests.helpers.cuda_lowering import lowered_for_cuda


def _check_against_the_two_kernels(scores, k, v, latent, chunk, *, interpret, split_rows=None):
    indices, v_t, v_scales = pallas_topk_with_v.top_k_and_v_to_e4m3(
        scores, k, v, latent, chunk, interpret=interpret, split_rows=split_rows)
    want_v_t, want_scales = pallas_chunking.chunk_to_e4m3_transposed(v, latent, chunk, interpret=interpret)
    np.testing.assert_array_equal(indices, jnp.sort(jax.lax.top_k(scores, k)[1], axis=-1))
    np.testing.assert_array_equal(v_t.astype(jnp.float32), want_v_t.astype(jnp.float32))
    np.testing.assert_array_equal(v_scales, want_scales)
    assert v_t.dtype == want_v_t.dtype and indices.dtype == jnp.int32


def test_interleaved_programs_cover_each_kind_once():
    for first, second in ((5, 5), (3, 7), (8, 2), (1, 0), (0, 4)):
        programs = jnp.arange(first + second)
        is_first, index = pallas_topk_with_v.interleaved(programs, first, second)
        is_first, index = np.asarray(is_first), np.asarray(index)
        assert sorted(index[is_first]) == list(range(first))
        assert sorted(index[~is_first]) == list(range(second))
        both = min(first, second)
        assert list(is_first[: 2 * both]) == [True, False] * both  # alternating while both last


@pytest.mark.parametrize("query_blocks", [2, 4, 7], ids=["fewer_rows", "as_many_rows", "more_rows"])
@pytest.mark.parametrize("split_rows", [False, True], ids=["one_row_array", "row_pieces"])
def test_matches_the_two_kernels_in_interpret_mode(query_blocks, split_rows):
    # 2 x 2 chunks of 64 tokens, 2 batches x 2 heads: 16 V programs against 4 * query_blocks rows of 300 scores
    latent, chunk = (4, 8, 16), (4, 4, 4)
    v = jax.random.normal(jax.random.key(1), (2, 4 * 8 * 16, 2, 64), jnp.bfloat16) * 3
    v = v.at[:, :64].multiply(50.0)  # a block of its own scale
    scores = jax.random.normal(jax.random.key(query_blocks), (2, 2, query_blocks, 300))
    scores = scores.at[..., :40].set(jnp.round(scores[..., :40]))  # ties, which go to the lower index
    _check_against_the_two_kernels(scores, 37, v, latent, chunk, interpret=True, split_rows=split_rows)


def test_refuses_rows_past_the_top_k_kernels():
    v = jnp.zeros((1, 64, 1, 64), jnp.bfloat16)
    assert not pallas_topk.fits(pallas_topk.MAX_ROW + 1)  # the whole call asks this first
    with pytest.raises(ValueError, match="exceed the top-k kernel's; use pallas_topk.top_k_indices"):
        pallas_topk_with_v.top_k_and_v_to_e4m3(jnp.zeros((1, pallas_topk.MAX_ROW + 1)), 4, v, (4, 4, 4), (4, 4, 4))


def test_lowers_for_cuda():
    scores = jax.ShapeDtypeStruct((1, 4, 1320, 1320), jnp.float32)
    v = jax.ShapeDtypeStruct((1, 24 * 44 * 80, 4, 128), jnp.bfloat16)
    text = lowered_for_cuda(lambda s, v: pallas_topk_with_v.top_k_and_v_to_e4m3(s, 165, v, (24, 44, 80), (4, 4, 4)),
                            scores, v)
    assert "bsa_top_k_and_v_to_e4m3" in text


@pytest.mark.gpu
def test_matches_the_two_kernels_on_gpu():
    latent, chunk = (24, 44, 80), (4, 4, 4)  # 1,320 blocks, the 84,480-token grid
    v = jax.random.normal(jax.random.key(3), (1, 24 * 44 * 80, 4, 128), jnp.bfloat16)
    for query_blocks in (1320, 700):
        scores = jax.random.normal(jax.random.key(query_blocks), (1, 4, query_blocks, 1320))
        for split_rows in (False, True):
            _check_against_the_two_kernels(scores, 165, v, latent, chunk, interpret=False, split_rows=split_rows)
