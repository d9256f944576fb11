"""BSA against every `bsa_cases` fixture of the original: selection, reference and kernels.

The fixtures (see `bsa_fixture_cases` in conftest.py) hold q, k, v, the original's output (float64 math, stored
float32) and its block mask; the Mosaic GPU forward has its own fixture tests in test_bsa_mosaic.py.
"""
import chex
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import (
    bsa_attention,
    from_chunk_order,
    indices_from_block_mask,
    select_blocks,
    sparse_attention_chunked,
    to_chunk_order,
)
from kernels.selection import block_mask_from_indices


@pytest.fixture(scope="module")
def cases(bsa_fixture_cases):
    return bsa_fixture_cases


def _rel_l2(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def _given_mask_output(name, params, latent_q, latent_k, arrays, dtype, backend):
    q = to_chunk_order(arrays["q"].astype(dtype), latent_q, params.chunk_3d_shape_q)
    k = to_chunk_order(arrays["k"].astype(dtype), latent_k, params.chunk_3d_shape_k)
    v = to_chunk_order(arrays["v"].astype(dtype), latent_k, params.chunk_3d_shape_k)
    indices, counts = indices_from_block_mask(arrays["block_mask"])
    out = sparse_attention_chunked(
        q, k, v, indices, counts, params.chunk_size_q, params.chunk_size_k, backend=backend
    )
    chex.assert_shape(out, q.shape)
    chex.assert_type(out, dtype)
    return from_chunk_order(out, latent_q, params.chunk_3d_shape_q)


def _check_selection(cases, backend):
    for name, params, latent_q, latent_k, arrays in cases:
        q = to_chunk_order(arrays["q"], latent_q, params.chunk_3d_shape_q)
        k = to_chunk_order(arrays["k"], latent_k, params.chunk_3d_shape_k)
        indices, counts = select_blocks(q, k, params, backend=backend)
        mask = block_mask_from_indices(indices, counts, arrays["block_mask"].shape[-1])
        agreement = float(jnp.mean(mask == arrays["block_mask"].astype(bool)))
        assert agreement >= 0.99, f"{name}: selection agrees on {agreement:.4f} of the mask entries"


@pytest.mark.parametrize("backend", ["reference", "pallas_interpret"])
def test_selection_agrees_with_the_original_block_mask(cases, backend):
    _check_selection(cases, backend)


@pytest.mark.gpu
def test_selection_on_gpu_agrees_with_the_original_block_mask(cases):
    _check_selection(cases, "pallas")


def test_reference_given_the_mask_matches_in_float32(cases):
    for case in cases:
        out = _given_mask_output(*case, jnp.float32, "reference")
        assert _rel_l2(out, case[-1]["out"]) < 1e-5, case[0]


def test_whole_call_in_bfloat16_matches(cases):
    for name, params, latent_q, latent_k, arrays in cases:
        out = bsa_attention(arrays["q"], arrays["k"], arrays["v"], latent_q, latent_k, params, backend="reference")
        chex.assert_type(out, jnp.bfloat16)
        assert _rel_l2(out, arrays["out"]) < 2e-2, name


def test_pallas_kernel_in_interpret_mode_given_the_mask_matches_in_bfloat16(cases):
    for case in cases:
        out = _given_mask_output(*case, jnp.bfloat16, "pallas_interpret")
        assert _rel_l2(out, case[-1]["out"]) < 2e-2, case[0]


@pytest.mark.gpu
def test_pallas_kernel_on_gpu_given_the_mask_matches_in_bfloat16(cases):
    for case in cases:
        out = _given_mask_output(*case, jnp.bfloat16, "pallas")
        assert _rel_l2(out, case[-1]["out"]) < 2e-2, case[0]


@pytest.mark.gpu
def test_whole_call_on_gpu_matches(cases):
    for name, params, latent_q, latent_k, arrays in cases:
        out = bsa_attention(arrays["q"], arrays["k"], arrays["v"], latent_q, latent_k, params, backend="pallas")
        chex.assert_type(out, jnp.bfloat16)
        assert _rel_l2(out, arrays["out"]) < 2e-2, name
