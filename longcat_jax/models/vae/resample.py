"""Spatial and temporal resampling of the Wan VAE, with the original's special first frame.

Channels-last activations `[B, T, H, W, C]`. The first chunk of a video is a single frame that is
resampled in space only; from the second chunk on, the temporal part runs with a cache carried from
the previous chunk:

- `down3d` (encoder): stride-2 kernel-3 temporal conv over [last frame of the previous chunk, chunk],
  so 1 + 4k frames become 1 + 2k (and then 1 + k).
- `up3d` (decoder): a causal temporal conv (zero history at the second chunk, as the original)
  doubles the channels, which are interleaved into twice the frames, so 1 + k frames become 1 + 2k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longcat_jax.models.vae.layers import CausalConv3d


def _per_frame(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """Applies a 2D conv to every frame: [B, T, H, W, C] -> [B, T, H', W', C']."""
    b, t = x.shape[:2]
    y = conv(x.reshape(b * t, *x.shape[2:]))
    return y.reshape(b, t, *y.shape[1:])


class Downsample(nnx.Module):
    """Halves H and W (zero pad right/bottom, 3x3 stride-2 conv); 'down3d' also halves time after the first frame.

    `__call__(x, cache)` -> (y, cache); the cache (down3d only) is the last frame after the spatial conv.
    """

    def __init__(self, dim: int, temporal: bool, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.temporal = temporal
        self.spatial_conv = nnx.Conv(
            dim, dim, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
            dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        )
        if temporal:
            self.time_conv = nnx.Conv(
                dim, dim, (3, 1, 1), strides=(2, 1, 1), padding="VALID",
                dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            )

    def __call__(self, x: jax.Array, cache: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        y = _per_frame(self.spatial_conv, x)  # [B, T, H/2, W/2, C]
        if not self.temporal:
            return y, None
        last = y[:, -1:]
        if cache is None:
            return y, last  # first frame: space only
        frames = jnp.concatenate([cache.astype(y.dtype), y], axis=1)  # [B, 1 + T, h, w, C], T even
        return self.time_conv(frames), last  # [B, T/2, h, w, C]


class Upsample(nnx.Module):
    """Doubles H and W (nearest, then a 3x3 conv to `out_dim`); 'up3d' also doubles time after the first frame.

    `__call__(x, cache)` -> (y, cache); the cache (up3d only) holds the temporal conv's last two input
    frames, zeros after the first chunk (the original restarts the temporal history there).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        temporal: bool,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        self.temporal = temporal
        self.spatial_conv = nnx.Conv(
            dim, out_dim, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        if temporal:
            self.time_conv = CausalConv3d(
                dim, 2 * dim, (3, 1, 1), dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )

    def __call__(self, x: jax.Array, cache: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        new_cache = None
        if self.temporal:
            if cache is None:
                new_cache = jnp.zeros((x.shape[0], self.time_conv.cache_frames, *x.shape[2:]), x.dtype)
            else:
                b, t, h, w, c = x.shape
                y, new_cache = self.time_conv(x, cache)  # [B, T, H, W, 2C]: two sub-frames per frame
                x = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest 2x: [B, T, 2H, 2W, C]
        return _per_frame(self.spatial_conv, x), new_cache
