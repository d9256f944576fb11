"""Shared inputs and ground truths of the BSA kernel tests.

Every kernel check compares against float32 attention over the full Sq x Sk logits masked to the same
selection (`dense_attention`), which shares no code path with the blocked reference or the kernels.
"""

import jax
import jax.numpy as jnp

from kernels import (
    BSAParams,
    block_mask_from_indices,
    from_chunk_order,
    indices_from_block_mask,
    reference,
    select_blocks,
    to_chunk_order,
)

BLOCK = 64  # tokens per block: the Mosaic kernel's only size, and the LongCat default (4x4x4 chunks)


def random_case(
    seed, *, b, h, d, mq, mk, width, block_q=BLOCK, block_k=BLOCK, dtype=jnp.bfloat16, sentinel_padded=False
):
    """q [b, mq*block_q, h, d], k and v [b, mk*block_k, h, d] in `dtype`; unsorted lists [b, h, mq, width] of
    distinct key blocks with uneven counts (1 to width); query block 0 of (batch 0, head 0) selects nothing.

    Entries past a list's count are other key blocks, or with `sentinel_padded` the lists are ascending and padded
    with the sentinel mk, as `select_blocks` returns them.
    """
    keys = jax.random.split(jax.random.key(seed), 5)
    q, k, v = (jax.random.normal(key, (b, m * block, h, d), jnp.float32).astype(dtype)
               for key, m, block in zip(keys[:3], (mq, mk, mk), (block_q, block_k, block_k)))
    indices = jnp.argsort(jax.random.uniform(keys[3], (b, h, mq, mk)), axis=-1)[..., :width].astype(jnp.int32)
    counts = jax.random.randint(keys[4], (b, h, mq), 1, width + 1).at[0, 0, 0].set(0).astype(jnp.int32)
    if sentinel_padded:
        indices = jnp.sort(jnp.where(jnp.arange(width) < counts[..., None], indices, mk), axis=-1)
    return q, k, v, indices, counts


def dense_attention(q, k, v, indices, counts, block_q, block_k):
    """The ground truth of `sparse_attention_chunked`: float32 attention of chunk-ordered q [B, Sq, H, D] over
    k, v [B, Sk, H, D] with the full logits masked to the selected blocks. Returns [B, Sq, H, D] float32."""
    mask = block_mask_from_indices(indices, counts, k.shape[1] // block_k)  # [B, H, Mq, Mk]
    return reference.dense_masked_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask, block_q, block_k)


def dense_whole_call(q, k, v, latent_q, latent_k, params: BSAParams):
    """The ground truth of `bsa_attention`: the reference selection, then `dense_attention`, in raster order.

    q [B, Sq, H, D], k and v [B, Sk, H, D] in (T, H, W) raster order. Returns [B, Sq, H, D] float32.
    """
    q_c = to_chunk_order(q, latent_q, params.chunk_3d_shape_q)
    k_c = to_chunk_order(k, latent_k, params.chunk_3d_shape_k)
    v_c = to_chunk_order(v, latent_k, params.chunk_3d_shape_k)
    indices, counts = select_blocks(q_c, k_c, params)
    out = dense_attention(q_c, k_c, v_c, indices, counts, params.chunk_size_q, params.chunk_size_k)
    return from_chunk_order(out, latent_q, params.chunk_3d_shape_q)


def fixture_inputs(case, dtype):
    """Chunk-ordered q, k, v in `dtype` and the original's selection (indices, counts) of one `bsa_fixture_cases`
    entry (name, params, latent_q, latent_k, arrays)."""
    _, params, latent_q, latent_k, arrays = case
    q = to_chunk_order(arrays["q"].astype(dtype), latent_q, params.chunk_3d_shape_q)  # [B, Sq, H, D]
    k = to_chunk_order(arrays["k"].astype(dtype), latent_k, params.chunk_3d_shape_k)  # [B, Sk, H, D]
    v = to_chunk_order(arrays["v"].astype(dtype), latent_k, params.chunk_3d_shape_k)
    indices, counts = indices_from_block_mask(arrays["block_mask"])
    return q, k, v, indices, counts
