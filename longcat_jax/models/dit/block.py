"""One single-stream DiT block: adaLN-modulated self attention, cross attention to text, SwiGLU FFN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kernels import BSAParams
from longcat_jax.models.dit.attention import KV, CrossAttention, Grid, SelfAttention
from longcat_jax.models.dit.layers import LayerNorm, Linear, gated_residual, modulate


class FeedForwardSwiGLU(nnx.Module):
    """w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.w1 = Linear(hidden_size, ffn_hidden_size, use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.w2 = Linear(ffn_hidden_size, hidden_size, use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.w3 = Linear(hidden_size, ffn_hidden_size, use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))


class DiTBlock(nnx.Module):
    """Self attention, cross attention and FFN, each with its residual; adaLN per latent frame in float32."""

    def __init__(self, hidden_size: int, num_heads: int, ffn_hidden_size: int, adaln_tembed_dim: int, *,
                 bsa: BSAParams | None, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.adaln = Linear(adaln_tembed_dim, 6 * hidden_size, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype)
        self.attn_norm = LayerNorm(hidden_size, affine=False, rngs=rngs)
        self.ffn_norm = LayerNorm(hidden_size, affine=False, rngs=rngs)
        self.cross_norm = LayerNorm(hidden_size, affine=True, rngs=rngs, param_dtype=param_dtype)
        self.attn = SelfAttention(hidden_size, num_heads, bsa=bsa, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.cross_attn = CrossAttention(hidden_size, num_heads, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.ffn = FeedForwardSwiGLU(hidden_size, ffn_hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, text: jax.Array, text_mask: jax.Array | None, t_emb: jax.Array, grid: Grid, *,
                 num_cond_latents: int = 0, kv_cache: KV | None = None, return_kv: bool = False,
                 skip_crs_attn: bool = False) -> tuple[jax.Array, KV | None]:
        """x: [B, N, C] (N = T*H*W of `grid`); text: [B, L, C]; text_mask: [B, L] bool or None;
        t_emb: [B, T, C_t] float32. Returns (x [B, N, C], this block's (k, v) if return_kv else None)."""
        b, n, c = x.shape
        nt = grid[0]
        per_frame = (b, nt, n // nt, c)
        mods = self.adaln(jax.nn.silu(t_emb))[:, :, None, :]  # [B, T, 1, 6C] float32
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mods, 6, axis=-1)

        x_mod = modulate(self.attn_norm, x.reshape(per_frame), shift_msa, scale_msa).reshape(b, n, c)
        attn_out, new_cache = self.attn(x_mod, grid, num_cond_latents=num_cond_latents, kv_cache=kv_cache,
                                        return_kv=return_kv)
        x = gated_residual(x.reshape(per_frame), gate_msa, attn_out.reshape(per_frame)).reshape(b, n, c)

        if not skip_crs_attn:
            normed = self.cross_norm(x)
            if kv_cache is None and num_cond_latents > 0:
                # Condition frames take no text: zeros for their tokens, cross attention for the rest.
                n_cond = num_cond_latents * (n // nt)
                noise_out = self.cross_attn(normed[:, n_cond:], text, text_mask)
                cross_out = jnp.concatenate([jnp.zeros((b, n_cond, c), noise_out.dtype), noise_out], axis=1)
            else:
                cross_out = self.cross_attn(normed, text, text_mask)
            x = x + cross_out.astype(x.dtype)

        x_mod = modulate(self.ffn_norm, x.reshape(per_frame), shift_mlp, scale_mlp).reshape(b, n, c)
        ffn_out = self.ffn(x_mod)
        x = gated_residual(x.reshape(per_frame), gate_mlp, ffn_out.reshape(per_frame)).reshape(b, n, c)
        return x, new_cache
