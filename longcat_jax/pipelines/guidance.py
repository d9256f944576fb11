"""Classifier-free guidance for LongCat-Video, with the CFG-zero* optimized scale the original always applies.

The original runs the DiT once on a doubled batch ordered [unconditional; conditional] and, whenever
`guidance_scale > 1`, combines the two halves as

    s    = <c, u> / (|u|^2 + 1e-8)            per batch item, over all of C, T, H, W
    pred = u * s + g * (c - u * s)

(CFG-zero*, arXiv 2503.18886). With s = 1 this is plain CFG `u + g * (c - u)`. Reductions run in float32 so a bf16
model output does not lose the dot products over millions of elements; results are float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

OPTIMIZED_SCALE_EPS = 1e-8


def uses_guidance(guidance_scale: float) -> bool:
    """Whether a run needs the unconditional branch: the original's `guidance_scale > 1`."""
    return guidance_scale > 1.0


def split_uncond_cond(prediction: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Splits a doubled-batch prediction [2B, ...] into (unconditional [B, ...], conditional [B, ...])."""
    half = prediction.shape[0] // 2
    return prediction[:half], prediction[half:]


def optimized_scale(cond: jax.Array, uncond: jax.Array) -> jax.Array:
    """CFG-zero*'s s = <c, u> / (|u|^2 + 1e-8), one per batch item: [B, ...] x 2 -> [B] float32."""
    batch = cond.shape[0]
    c = cond.reshape(batch, -1).astype(jnp.float32)  # [B, N]
    u = uncond.reshape(batch, -1).astype(jnp.float32)  # [B, N]
    return jnp.sum(c * u, axis=1) / (jnp.sum(u * u, axis=1) + OPTIMIZED_SCALE_EPS)


def cfg_zero_star(cond: jax.Array, uncond: jax.Array, guidance_scale: float | jax.Array) -> jax.Array:
    """Guided prediction `u * s + g * (c - u * s)` with s from `optimized_scale`; [B, ...] float32."""
    scale = optimized_scale(cond, uncond).reshape((cond.shape[0],) + (1,) * (cond.ndim - 1))  # [B, 1, ...]
    c = cond.astype(jnp.float32)
    u_scaled = uncond.astype(jnp.float32) * scale
    return u_scaled + guidance_scale * (c - u_scaled)

