"""Block-sparse attention in plain jax.numpy: the CPU backend and the ground truth for the kernels.

Both versions take chunk-ordered q [B, Sq, H, D], k and v [B, Sk, H, D] and compute softmax attention
with scale 1/sqrt(D) in float32, each query block restricted to its selected key blocks. A query
block that selected nothing outputs 0 (as in the original). `blocked_attention` also takes which keys
are real, for grids padded to whole chunks (`padding.GridPadding`): padded keys get no weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _masked_softmax_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, round_weights=None
) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v over the allowed keys; rows with no allowed key give 0.

    q [..., Lq, D], k and v [..., Lk, D], allowed broadcastable to [..., Lq, Lk]; float32 math. round_weights: None,
    or how the unnormalised weights are rounded before the product with v (`fp8_operands.round_weights`).
    """
    logits = jnp.einsum("...qd,...kd->...qk", q, k, precision=_HIGHEST) * (q.shape[-1] ** -0.5)
    logits = jnp.where(allowed, logits, -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.where(allowed, jnp.exp(logits - row_max), 0.0)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    if round_weights is not None:
        weights = round_weights(weights)
    weights = weights / jnp.where(denom > 0, denom, 1.0)
    return jnp.einsum("...qk,...kd->...qd", weights, v, precision=_HIGHEST)


def dense_masked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, block_mask: jax.Array, chunk_size_q: int, chunk_size_k: int
) -> jax.Array:
    """Attention with the full Sq x Sk logits masked by a block mask [B, H, Mq, Mk]. Small inputs only.

    Returns [B, Sq, H, D] in q's dtype.
    """
    qf, kf, vf = (x.astype(jnp.float32).transpose(0, 2, 1, 3) for x in (q, k, v))  # [B, H, S, D]
    allowed = jnp.repeat(jnp.repeat(block_mask.astype(bool), chunk_size_q, axis=2), chunk_size_k, axis=3)
    out = _masked_softmax_attention(qf, kf, vf, allowed)  # [B, H, Sq, D]
    return out.transpose(0, 2, 1, 3).astype(q.dtype)


def blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    counts: jax.Array,
    chunk_size_q: int,
    chunk_size_k: int,
    key_valid: jax.Array | None = None,
    round_weights=None,
) -> jax.Array:
    """Attention that gathers only the selected key blocks, one query block at a time.

    indices [B, H, Mq, K_max] (padded), counts [B, H, Mq]. key_valid: None (every key is real) or [Sk] bool,
    False for padding keys, which then get no weight. round_weights: None, or the rounding of the unnormalised
    softmax weights (the FP8 kernel's emulation, `fp8_operands.emulated_weight_rounding`), called with a query
    block's weights [B, H, cq, K_max * ck] and their key blocks [B, H, K_max]. Memory per step is that of one query
    block's selected keys, never Sq x Sk. Differentiable with jax.grad. Returns [B, Sq, H, D].
    """
    b, sq, h, d = q.shape
    sk = k.shape[1]
    mq, mk = sq // chunk_size_q, sk // chunk_size_k
    width = indices.shape[-1]
    q_blocks = q.astype(jnp.float32).reshape(b, mq, chunk_size_q, h, d).transpose(1, 0, 3, 2, 4)  # [Mq, B, H, cq, D]
    k_blocks = k.astype(jnp.float32).reshape(b, mk, chunk_size_k, h, d).transpose(0, 3, 1, 2, 4)  # [B, H, Mk, ck, D]
    v_blocks = v.astype(jnp.float32).reshape(b, mk, chunk_size_k, h, d).transpose(0, 3, 1, 2, 4)
    per_block_indices = jnp.moveaxis(jnp.minimum(indices, mk - 1), 2, 0)  # [Mq, B, H, K_max]
    per_block_valid = jnp.moveaxis(jnp.arange(width) < counts[..., None], 2, 0)  # [Mq, B, H, K_max]
    real_keys = None if key_valid is None else jnp.asarray(key_valid, bool).reshape(mk, chunk_size_k)  # [Mk, ck]

    def one_query_block(args):
        q_blk, idx, valid = args  # [B, H, cq, D], [B, H, K_max], [B, H, K_max]
        k_sel = jnp.take_along_axis(k_blocks, idx[..., None, None], axis=2)  # [B, H, K_max, ck, D]
        v_sel = jnp.take_along_axis(v_blocks, idx[..., None, None], axis=2)
        k_sel = k_sel.reshape(b, h, width * chunk_size_k, d)
        v_sel = v_sel.reshape(b, h, width * chunk_size_k, d)
        allowed = jnp.repeat(valid, chunk_size_k, axis=-1)[:, :, None, :]  # [B, H, 1, K_max * ck]
        if real_keys is not None:
            allowed = allowed & real_keys[idx].reshape(b, h, 1, width * chunk_size_k)
        rounding = None if round_weights is None else lambda weights: round_weights(weights, idx)
        return _masked_softmax_attention(q_blk, k_sel, v_sel, allowed, rounding)  # [B, H, cq, D]

    out = jax.lax.map(one_query_block, (q_blocks, per_block_indices, per_block_valid))  # [Mq, B, H, cq, D]
    return out.transpose(1, 0, 3, 2, 4).reshape(b, sq, h, d).astype(q.dtype)
