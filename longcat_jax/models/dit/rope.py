"""3D rotary position embedding over the latent (T, H, W) token grid.

The head dimension D is split into a temporal part t = D - 4*(D//6) and two spatial parts
h = w = 2*(D//6); each part rotates interleaved pairs (x[2i], x[2i+1]) by position * base^(-2i/part).
Tables are built inside the traced function from the static grid, so no large constants are baked
into compiled programs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ROPE_BASE = 10000.0


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """How many channels of a head the t, h and w positions rotate."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _inverse_frequencies(dim: int) -> np.ndarray:
    """base^(-2i/dim) for i < dim/2, each repeated twice for the interleaved pairs, float32 [dim]."""
    exponents = np.arange(0, dim, 2, dtype=np.float32)[: dim // 2] / np.float32(dim)
    inv = np.float32(1.0) / (np.float32(ROPE_BASE) ** exponents)
    return np.repeat(inv.astype(np.float32), 2)


def rope_tables(grid: tuple[int, int, int], head_dim: int) -> tuple[jax.Array, jax.Array]:
    """cos, sin tables [T*H*W, D] float32 for the tokens of the grid in (T, H, W) raster order."""
    nt, nh, nw = grid
    dim_t, dim_h, dim_w = axis_dims(head_dim)
    pos_t = jnp.arange(nt, dtype=jnp.float32)
    pos_h = jnp.arange(nh, dtype=jnp.float32)
    pos_w = jnp.arange(nw, dtype=jnp.float32)
    ang_t = pos_t[:, None] * _inverse_frequencies(dim_t)[None]  # [T, dim_t]
    ang_h = pos_h[:, None] * _inverse_frequencies(dim_h)[None]  # [H, dim_h]
    ang_w = pos_w[:, None] * _inverse_frequencies(dim_w)[None]  # [W, dim_w]
    angles = jnp.concatenate(
        [
            jnp.broadcast_to(ang_t[:, None, None, :], (nt, nh, nw, dim_t)),
            jnp.broadcast_to(ang_h[None, :, None, :], (nt, nh, nw, dim_h)),
            jnp.broadcast_to(ang_w[None, None, :, :], (nt, nh, nw, dim_w)),
        ],
        axis=-1,
    ).reshape(nt * nh * nw, head_dim)
    # materialised once ([S, D], small): left to itself XLA fused the cos and sin into each use, recomputing them for
    # every batch item and head
    return lax.optimization_barrier((jnp.cos(angles), jnp.sin(angles)))


def _rotate_pairs(x: jax.Array) -> jax.Array:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) along the last axis: each pair reversed, times (-1, 1), all
    elementwise (stacking the two halves made XLA write RoPE through a concatenate fusion, in float32)."""
    pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    return (jnp.flip(pairs, axis=-1) * jnp.array([-1, 1], x.dtype)).reshape(x.shape)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, S, H, D] by the tables [S, D] in float32; returns x's dtype."""
    xf = x.astype(jnp.float32)
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    return (xf * cos + _rotate_pairs(xf) * sin).astype(x.dtype)
