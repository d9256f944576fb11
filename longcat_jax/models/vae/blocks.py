"""Residual block, per-frame self-attention and the middle block of the Wan VAE (channels-last)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longcat_jax.models.vae.layers import CausalConv3d, ChannelRMSNorm


class ResidualBlock(nnx.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 projected if the width changes) shortcut.

    `__call__(x, cache)`: x `[B, T, H, W, Cin]`, cache a dict of the two convs' frame caches
    (None at the start of a video). Returns (y `[B, T, H, W, Cout]`, new cache).
    """

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = ChannelRMSNorm(in_dim, **kw)
        self.conv1 = CausalConv3d(in_dim, out_dim, **kw)
        self.norm2 = ChannelRMSNorm(out_dim, **kw)
        self.conv2 = CausalConv3d(out_dim, out_dim, **kw)
        self.shortcut = nnx.Linear(in_dim, out_dim, **kw) if in_dim != out_dim else None

    def __call__(self, x: jax.Array, cache: dict | None) -> tuple[jax.Array, dict]:
        cache = cache or {"conv1": None, "conv2": None}
        residual = x if self.shortcut is None else self.shortcut(x)
        h, cache1 = self.conv1(jax.nn.silu(self.norm1(x)), cache["conv1"])
        h, cache2 = self.conv2(jax.nn.silu(self.norm2(h)), cache["conv2"])
        return h + residual, {"conv1": cache1, "conv2": cache2}


class FrameAttention(nnx.Module):
    """Single-head self-attention over the pixels of each frame (head size = channels), residual."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm = ChannelRMSNorm(dim, **kw)
        self.qkv = nnx.Linear(dim, 3 * dim, **kw)
        self.proj = nnx.Linear(dim, dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b * t, h * w, 3, 1, c)  # [BT, HW, 3, heads=1, C]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [BT, HW, 1, C]
        logits = jnp.einsum("bqhc,bkhc->bhqk", q, k, preferred_element_type=jnp.float32) * (c**-0.5)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [BT, 1, HW, HW]
        out = jnp.einsum("bhqk,bkhc->bqhc", probs, v)  # [BT, HW, 1, C]
        return x + self.proj(out.reshape(b, t, h, w, c))


class MidBlock(nnx.Module):
    """Residual block, frame attention, residual block (the original's middle block with one layer)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.res_in = ResidualBlock(dim, dim, **kw)
        self.attention = FrameAttention(dim, **kw)
        self.res_out = ResidualBlock(dim, dim, **kw)

    def __call__(self, x: jax.Array, cache: dict | None) -> tuple[jax.Array, dict]:
        cache = cache or {"res_in": None, "res_out": None}
        x, cache_in = self.res_in(x, cache["res_in"])
        x = self.attention(x)
        x, cache_out = self.res_out(x, cache["res_out"])
        return x, {"res_in": cache_in, "res_out": cache_out}
