"""Basic layers of the Wan VAE, channels-last: the causal 3D convolution with its frame cache and the RMS norm.

Activations are `[B, T, H, W, C]`. A causal convolution never sees future frames: its temporal
padding is all in front. When a video is processed chunk by chunk, the frames in front come from
the previous chunk (the cache) instead of zeros, so chunked and whole-video processing agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class CausalConv3d(nnx.Module):
    """3D convolution, causal in time, 'same' in space; carries the last `kernel_t - 1` input frames.

    `__call__(x, cache)`: x `[B, T, H, W, Cin]`, cache `[B, kernel_t - 1, H, W, Cin]` or None at the
    start of a video (zeros, as the original's causal zero padding). Returns (y `[B, T, H, W, Cout]`,
    new cache = the last `kernel_t - 1` frames of the cache followed by x).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: tuple[int, int, int] = (3, 3, 3),
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        kt, kh, kw = kernel_size
        self.cache_frames = kt - 1
        self.conv = nnx.Conv(
            in_dim,
            out_dim,
            kernel_size,
            padding=((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, cache: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        if self.cache_frames == 0:
            return self.conv(x), None
        if cache is None:
            cache = jnp.zeros((x.shape[0], self.cache_frames, *x.shape[2:]), x.dtype)
        frames = jnp.concatenate([cache.astype(x.dtype), x], axis=1)  # [B, cache + T, H, W, Cin]
        return self.conv(frames), frames[:, -self.cache_frames :]


class ChannelRMSNorm(nnx.Module):
    """x / ||x||_2 over channels * sqrt(C) * scale, computed in float32 (the original's `F.normalize` form)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        del rngs  # no random initialisation: the scale starts at one
        self.dim = dim
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
        y = xf / jnp.maximum(norm, 1e-12) * (self.dim**0.5) * self.scale.get_value().astype(jnp.float32)
        return y.astype(self.dtype)
