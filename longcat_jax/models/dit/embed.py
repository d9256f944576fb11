"""Input and output layers of the DiT: patch embedding, timestep and caption embedders, final layer."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from longcat_jax.errors import InputError
from longcat_jax.models.dit.layers import LayerNorm, Linear, modulate


class PatchEmbed3D(nnx.Module):
    """Non-overlapping 3D patches -> tokens: a Conv3d with kernel = stride = patch, done as one matmul.

    kernel: [pt, ph, pw, C_in, D] (Flax conv layout). Input [B, C, T, H, W] -> tokens [B, N, D] in
    (T, H, W) raster order of the patch grid.
    """

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int, *,
                 rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.patch_size = tuple(patch_size)
        self.dtype = dtype
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
        self.kernel = nnx.Param(init(rngs.params(), (*patch_size, in_channels, hidden_size), param_dtype))
        self.bias = nnx.Param(jnp.zeros((hidden_size,), param_dtype))

    def __call__(self, video: jax.Array) -> jax.Array:
        pt, ph, pw = self.patch_size
        b, c, t, h, w = video.shape
        if t % pt or h % ph or w % pw:
            raise InputError(f"latent size (T,H,W)=({t},{h},{w}) is not divisible by the patch size {self.patch_size}")
        x = video.astype(self.dtype).reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
        tokens = jnp.einsum("bcTiHjWk,ijkcd->bTHWd", x, self.kernel.get_value().astype(self.dtype),
                            preferred_element_type=jnp.float32)
        tokens = tokens + self.bias.get_value().astype(jnp.float32)
        return tokens.reshape(b, -1, tokens.shape[-1]).astype(self.dtype)  # [B, N, D]


def timestep_frequencies(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding [cos, sin] of (fractional) timesteps t [N] -> [N, dim], float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


class TimestepEmbedder(nnx.Module):
    """Timestep -> sinusoid -> Linear -> SiLU -> Linear, all in float32 (the original runs it under fp32 autocast)."""

    def __init__(self, t_embed_dim: int, frequency_embedding_size: int, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.frequency_embedding_size = frequency_embedding_size
        self.linear_in = Linear(frequency_embedding_size, t_embed_dim, rngs=rngs, dtype=jnp.float32,
                                param_dtype=param_dtype)
        self.linear_out = Linear(t_embed_dim, t_embed_dim, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype)

    def __call__(self, t: jax.Array) -> jax.Array:
        """t: [N] -> [N, t_embed_dim] float32."""
        freq = timestep_frequencies(t, self.frequency_embedding_size)
        return self.linear_out(jax.nn.silu(self.linear_in(freq)))


class CaptionEmbedder(nnx.Module):
    """Text encoder states -> Linear -> GELU(tanh) -> Linear to the DiT width."""

    def __init__(self, caption_channels: int, hidden_size: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.linear_in = Linear(caption_channels, hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.linear_out = Linear(hidden_size, hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, caption: jax.Array) -> jax.Array:
        return self.linear_out(jax.nn.gelu(self.linear_in(caption), approximate=True))


class FinalLayer(nnx.Module):
    """adaLN shift/scale per latent frame, LayerNorm, Linear to patch values; the Linear runs in float32."""

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int, adaln_tembed_dim: int, *,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.norm = LayerNorm(hidden_size, affine=False, rngs=rngs)
        self.adaln = Linear(adaln_tembed_dim, 2 * hidden_size, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype)
        self.linear = Linear(hidden_size, num_patch * out_channels, rngs=rngs, dtype=jnp.float32,
                             param_dtype=param_dtype)

    def __call__(self, x: jax.Array, t_emb: jax.Array) -> jax.Array:
        """x: [B, T, S, C] tokens per latent frame; t_emb: [B, T, C_t] float32 -> [B, T, S, P*C_out] float32."""
        shift, scale = jnp.split(self.adaln(jax.nn.silu(t_emb))[:, :, None, :], 2, axis=-1)
        return self.linear(modulate(self.norm, x, shift, scale))


def unpatchify(x: jax.Array, grid: tuple[int, int, int], patch_size: tuple[int, int, int],
               out_channels: int) -> jax.Array:
    """[B, N, pt*ph*pw*C_out] tokens in (T, H, W) raster order -> video latent [B, C_out, T*pt, H*ph, W*pw]."""
    nt, nh, nw = grid
    pt, ph, pw = patch_size
    b = x.shape[0]
    x = x.reshape(b, nt, nh, nw, pt, ph, pw, out_channels)
    x = jnp.transpose(x, (0, 7, 1, 4, 2, 5, 3, 6))
    return x.reshape(b, out_channels, nt * pt, nh * ph, nw * pw)
