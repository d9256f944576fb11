"""The Mosaic GPU (Hopper) forward kernel: in the Mosaic GPU interpreter on the CPU, natively on a GPU (`gpu`).

The interpreter runs the kernel's pipeline (producer warpgroup gathering the selected K/V blocks by TMA,
barriers, two consumer warpgroups taking turns, per-block online softmax, stores); see `MosaicConfig` for
what it replaces. Cases: uneven and empty selections, an odd number of query blocks (one consumer idle),
Sq != Sk, head_dim 64 and 128, the original's fixtures, gradients through the shared Triton backward.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import (
    BSAInputError,
    BSAConfigError,
    KernelConfig,
    MosaicConfig,
    from_chunk_order,
    indices_from_block_mask,
    sparse_attention_chunked,
    to_chunk_order,
)
from kernels import pallas_mosaic
from kernels.reference import blocked_attention

from bsa_cases import BLOCK, check_gradients_match_reference, random_case, rel_l2

MOSAIC = KernelConfig(forward="mosaic")


def _check_against_reference(backend, config, list_width=None, **shape):
    q, k, v, indices, counts = random_case(3, **shape)
    if list_width:  # longer (padded) lists: more than one TMA copy per list
        indices = jnp.pad(indices, ((0, 0), (0, 0), (0, 0), (0, list_width - indices.shape[-1])))
    out = sparse_attention_chunked(q, k, v, indices, counts, BLOCK, BLOCK, backend=backend, kernel_config=config)
    chex.assert_shape(out, q.shape)
    chex.assert_type(out, jnp.bfloat16)
    want = blocked_attention(*(x.astype(jnp.float32) for x in (q, k, v)), indices, counts, BLOCK, BLOCK)
    assert rel_l2(out, want) < 2e-2
    np.testing.assert_array_equal(np.asarray(out[0, :BLOCK, 0], np.float32), 0.0)  # the empty selection


@pytest.mark.parametrize("schedule_barrier", [True, False])
def test_interpret_uneven_and_empty_selections_odd_query_blocks(schedule_barrier):
    config = KernelConfig(forward="mosaic", mosaic=MosaicConfig(schedule_barrier=schedule_barrier))
    _check_against_reference("pallas_interpret", config, b=1, h=2, d=64, mq=3, mk=5, width=4)


def test_interpret_head_dim_128_two_producers_long_lists_rounds():
    # 7 query blocks over 2 rounds of 2 pairs: the second CTA's last round is half empty
    config = KernelConfig(forward="mosaic", mosaic=MosaicConfig(producers=2, rounds=2))
    _check_against_reference("pallas_interpret", config, list_width=300, b=2, h=1, d=128, mq=7, mk=6, width=5)


def test_interpret_three_k_stages_one_round_per_cta():
    config = KernelConfig(forward="mosaic", mosaic=MosaicConfig(k_stages=3, rounds=1))
    _check_against_reference("pallas_interpret", config, b=1, h=2, d=64, mq=4, mk=5, width=4)


def _fixture_output(case, backend):
    name, params, latent_q, latent_k, arrays = case
    q = to_chunk_order(arrays["q"].astype(jnp.bfloat16), latent_q, params.chunk_3d_shape_q)
    k = to_chunk_order(arrays["k"].astype(jnp.bfloat16), latent_k, params.chunk_3d_shape_k)
    v = to_chunk_order(arrays["v"].astype(jnp.bfloat16), latent_k, params.chunk_3d_shape_k)
    indices, counts = indices_from_block_mask(arrays["block_mask"])
    out = sparse_attention_chunked(q, k, v, indices, counts, BLOCK, BLOCK, backend=backend, kernel_config=MOSAIC)
    return from_chunk_order(out, latent_q, params.chunk_3d_shape_q)


def _mosaic_cases(cases, names=None):
    selected = [c for c in cases if c[1].chunk_size_q == BLOCK and c[1].chunk_size_k == BLOCK]
    return [c for c in selected if names is None or c[0] in names]


def test_interpret_fixtures_given_the_mask_match_in_bfloat16(bsa_fixture_cases):
    # the two smallest 64-token-block fixtures: head_dim 128, and q shorter than k (condition frames)
    cases = _mosaic_cases(bsa_fixture_cases, {"topk_0.75_d128", "cond_q_shorter_than_k"})
    assert len(cases) == 2
    for case in cases:
        assert rel_l2(_fixture_output(case, "pallas_interpret"), case[-1]["out"]) < 2e-2, case[0]


@pytest.mark.gpu
def test_gpu_fixtures_given_the_mask_match_in_bfloat16(bsa_fixture_cases):
    cases = _mosaic_cases(bsa_fixture_cases)
    assert len(cases) >= 6
    for case in cases:
        assert rel_l2(_fixture_output(case, "pallas"), case[-1]["out"]) < 2e-2, case[0]


@pytest.mark.gpu
@pytest.mark.parametrize("schedule_barrier", [True, False])
def test_gpu_uneven_and_empty_selections(schedule_barrier):
    config = KernelConfig(forward="mosaic", mosaic=MosaicConfig(schedule_barrier=schedule_barrier))
    _check_against_reference("pallas", config, b=2, h=3, d=128, mq=9, mk=12, width=7)


def test_interpret_gradients_through_the_mosaic_forward_match_reference():
    check_gradients_match_reference(MOSAIC, b=1, h=1, d=64, mq=2, mk=3, width=2)


def test_mosaic_forward_refuses_what_it_cannot_run():
    q = jnp.zeros((1, 256, 1, 64), jnp.bfloat16)
    indices, counts = jnp.zeros((1, 1, 2, 1), jnp.int32), jnp.ones((1, 1, 2), jnp.int32)
    with pytest.raises(BSAInputError, match="Mosaic GPU BSA forward needs 64-token"):
        sparse_attention_chunked(q, q, q, indices, counts, 128, 128, backend="pallas_interpret", kernel_config=MOSAIC)
    with pytest.raises(BSAInputError, match="bf16/f16"):
        q32 = q.astype(jnp.float32)
        sparse_attention_chunked(q32, q32, q32, jnp.zeros((1, 1, 4, 1), jnp.int32), jnp.ones((1, 1, 4), jnp.int32),
                                 BLOCK, BLOCK, backend="pallas_interpret", kernel_config=MOSAIC)
    with pytest.raises(BSAConfigError, match="unknown BSA forward kernel"):
        KernelConfig(forward="cutlass")
    with pytest.raises(BSAConfigError, match="k_stages must be at least 2"):
        MosaicConfig(k_stages=1)
    with pytest.raises(BSAConfigError, match="producers must be 1 or 2"):
        MosaicConfig(producers=3)
    with pytest.raises(BSAConfigError, match="rounds must be an int >= 1"):
        MosaicConfig(rounds=0)
    q = jnp.zeros((1, 256, 1, 128), jnp.bfloat16)
    with pytest.raises(BSAConfigError, match="lower MosaicConfig.k_stages"):
        sparse_attention_chunked(q, q, q, jnp.zeros((1, 1, 4, 1), jnp.int32), jnp.ones((1, 1, 4), jnp.int32),
                                 BLOCK, BLOCK, backend="pallas_interpret",
                                 kernel_config=KernelConfig(forward="mosaic", mosaic=MosaicConfig(k_stages=4, v_stages=3)))
    # CDF lists over a long video: more than the default stages leave room for; "auto" leaves them to Triton
    assert pallas_mosaic.fits(128, 2640, MosaicConfig()) and not pallas_mosaic.fits(128, 6000, MosaicConfig())
    long_lists = jnp.zeros((1, 1, 4, 6000), jnp.int32)
    with pytest.raises(BSAConfigError, match="or use KernelConfig\\(forward='triton'\\) for lists this long"):
        sparse_attention_chunked(q, q, q, long_lists, jnp.ones((1, 1, 4), jnp.int32), BLOCK, BLOCK,
                                 backend="pallas_interpret", kernel_config=MOSAIC)


def _whole_call_case(latent, chunk):
    from kernels import BSAParams

    params = BSAParams(sparsity=0.5, chunk_3d_shape_q=chunk, chunk_3d_shape_k=chunk)
    shape = (1, int(np.prod(latent)), 2, 64)
    q, k, v, do = (jax.random.normal(key, shape, jnp.float32) for key in jax.random.split(jax.random.key(4), 4))
    return params, q, k, v, do


RASTER_CASES = [((4, 8, 12), (4, 4, 4)), ((2, 8, 16), (2, 4, 8))]


def _check_whole_call(latent, chunk, backend):
    # bsa_attention with the Mosaic forward writes raster order straight from the kernel (runs of cw tokens)
    from kernels import bsa_attention

    params, q, k, v, do = _whole_call_case(latent, chunk)

    def loss(backend, config, q, k, v):
        out = bsa_attention(q, k, v, latent, latent, params, backend=backend, kernel_config=config)
        return jnp.sum(out.astype(jnp.float32) * do), out

    grad = jax.grad(loss, argnums=(2, 3, 4), has_aux=True)
    got, out = grad(backend, MOSAIC, *(x.astype(jnp.bfloat16) for x in (q, k, v)))
    want, want_out = grad("reference", None, q, k, v)
    assert rel_l2(out, want_out) < 2e-2
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert rel_l2(g, w) < 2e-2, name


@pytest.mark.parametrize("latent, chunk", RASTER_CASES)
def test_interpret_whole_call_output_and_gradients_in_raster_order(latent, chunk):
    _check_whole_call(latent, chunk, "pallas_interpret")


@pytest.mark.gpu
@pytest.mark.parametrize("latent, chunk", RASTER_CASES)
def test_gpu_whole_call_output_and_gradients_in_raster_order(latent, chunk):
    _check_whole_call(latent, chunk, "pallas")
