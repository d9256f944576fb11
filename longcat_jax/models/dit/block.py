"""One single-stream DiT block: adaLN-modulated self attention, cross attention to text, SwiGLU FFN.

The cross attention and the FFN act on each token alone, so with `chunk_tokens` set they run over groups of whole
latent frames, one group at a time in a loop: their temporaries ([N, ffn_hidden] in the FFN) then hold one group's
tokens instead of all of them, and the residual stream is updated in place. The result is the same as unchunked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kernels import BSAParams, KernelConfig
from longcat_jax.models.dit.attention import KV, CrossAttention, Grid, SelfAttention
from longcat_jax.models.dit.layers import LayerNorm, Linear, gated_residual, modulate
from longcat_jax.models.dit.quantized_linear import QuantizedLinear
from longcat_jax.quantization.matmul import quantize_activations
from longcat_jax.quantization.modulated_kernel import fits_row_kernel, modulated_quantize
from longcat_jax.quantization.swiglu import fp8_swiglu_ffn


def frame_group(frames: int, tokens_per_frame: int, chunk_tokens: int | None) -> int:
    """Latent frames per chunk: the largest divisor of `frames` whose tokens stay within `chunk_tokens` (at least
    one frame; all of them when `chunk_tokens` is None)."""
    if chunk_tokens is None:
        return frames
    fitting = [g for g in range(1, frames + 1) if frames % g == 0 and g * tokens_per_frame <= chunk_tokens]
    return max(fitting, default=1)


def over_frame_groups(update, x: jax.Array, per_frame: tuple[jax.Array, ...], group: int) -> jax.Array:
    """x [B, T, S, C] with `update(chunk [B, g, S, C], first_frame, *per_frame chunks [B, g, ...])` applied to each
    group of `group` frames in turn (a loop, so one group's temporaries are live at a time); in place."""
    frames = x.shape[1]
    if group >= frames:
        return update(x, 0, *per_frame)

    def body(index, x):
        start = index * group
        chunk = jax.lax.dynamic_slice_in_dim(x, start, group, axis=1)
        args = [jax.lax.dynamic_slice_in_dim(a, start, group, axis=1) for a in per_frame]
        return jax.lax.dynamic_update_slice_in_dim(x, update(chunk, start, *args), start, axis=1)

    return jax.lax.fori_loop(0, frames // group, body, x)


class FeedForwardSwiGLU(nnx.Module):
    """w2(silu(w1 x) * w3 x), no biases. With the three Linears plain FP8 ones (`QuantizedLinear.plain_fp8`) it runs
    as one FP8 FFN whose hidden activation is quantized for w2 without being written in bf16
    (`quantization.swiglu`); `row_kernels` off (`LongCatDiT.set_row_kernels`) keeps its quantization in XLA's form,
    which XLA can split over devices."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.w1 = Linear(hidden_size, ffn_hidden_size, use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.w2 = Linear(ffn_hidden_size, hidden_size, use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.w3 = Linear(hidden_size, ffn_hidden_size, use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.row_kernels = True

    @property
    def fused_fp8(self) -> bool:
        """Whether the three Linears are plain FP8 ones, so the FFN runs as `quantization.swiglu`'s one function."""
        return all(isinstance(linear, QuantizedLinear) and linear.plain_fp8 for linear in (self.w1, self.w2, self.w3))

    def __call__(self, x: jax.Array, prequantized: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """x [..., C] -> [..., C] in the Linears' dtype. prequantized (fused FP8 only): x's per-token e4m3 form
        (xq [..., C], x_scale [..., 1]), made by the caller; x then only carries the gradient."""
        if self.fused_fp8:
            dtype = jnp.dtype(self.w2.dtype)
            gemm_dtype = jnp.dtype(self.w2.scheme.gemm_dtype)
            y = fp8_swiglu_ffn(x.astype(dtype), self.w1.quantized_weight, self.w3.quantized_weight,
                               self.w2.quantized_weight, gemm_dtype, dtype, self.row_kernels,
                               prequantized)
            return y.astype(dtype)
        return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))


class DiTBlock(nnx.Module):
    """Self attention, cross attention and FFN, each with its residual; adaLN per latent frame in float32.

    `chunk_tokens` (set by `LongCatDiT.set_token_chunking`; None: off) runs the cross attention and the FFN over
    groups of whole latent frames of at most that many tokens (see the module docstring). `row_kernels` (on unless
    `LongCatDiT.set_row_kernels` turns it off): an FP8 block's GEMM inputs are quantized by a Pallas row kernel on
    NVIDIA GPUs (`_prequantized_input`).
    """

    def __init__(self, hidden_size: int, num_heads: int, ffn_hidden_size: int, adaln_tembed_dim: int, *,
                 rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.chunk_tokens: int | None = None
        self.row_kernels = True
        self.adaln = Linear(adaln_tembed_dim, 6 * hidden_size, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype)
        self.attn_norm = LayerNorm(hidden_size, affine=False, rngs=rngs)
        self.ffn_norm = LayerNorm(hidden_size, affine=False, rngs=rngs)
        self.cross_norm = LayerNorm(hidden_size, affine=True, rngs=rngs, param_dtype=param_dtype)
        self.attn = SelfAttention(hidden_size, num_heads, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.cross_attn = CrossAttention(hidden_size, num_heads, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.ffn = FeedForwardSwiGLU(hidden_size, ffn_hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, text: jax.Array, text_mask: jax.Array | None, t_emb: jax.Array, grid: Grid, *,
                 bsa: BSAParams | None = None, bsa_backend: str = "auto", bsa_kernel_config: KernelConfig | None = None,
                 num_cond_latents: int = 0, kv_cache: KV | None = None, return_kv: bool = False,
                 skip_crs_attn: bool = False) -> tuple[jax.Array, KV | None]:
        """x: [B, N, C] (N = T*H*W of `grid`); text: [B, L, C]; text_mask: [B, L] bool or None;
        t_emb: [B, T, C_t] float32; bsa, bsa_backend, bsa_kernel_config: the DiT's self-attention setting
        (`LongCatDiT.set_bsa`; bsa None: dense).
        Returns (x [B, N, C], this block's (k, v) if return_kv else None)."""
        b, n, c = x.shape
        nt = grid[0]
        per_frame = (b, nt, n // nt, c)
        mods = self.adaln(jax.nn.silu(t_emb))[:, :, None, :]  # [B, T, 1, 6C] float32
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mods, 6, axis=-1)

        x_mod = modulate(self.attn_norm, x.reshape(per_frame), shift_msa, scale_msa).reshape(b, n, c)
        prequantized = self._prequantized_input(self.attn.qkv, self.attn_norm, x.reshape(per_frame),
                                                (shift_msa, scale_msa))
        attn_out, new_cache = self.attn(x_mod, grid, bsa=bsa, bsa_backend=bsa_backend,
                                        bsa_kernel_config=bsa_kernel_config, num_cond_latents=num_cond_latents,
                                        kv_cache=kv_cache, return_kv=return_kv, prequantized=prequantized)
        x = gated_residual(x.reshape(per_frame), gate_msa, attn_out.reshape(per_frame))  # [B, T, S, C]

        group = frame_group(nt, n // nt, self.chunk_tokens)
        if not skip_crs_attn:
            # Condition frames take no text: zeros for their tokens (only when they are in x, not in a cache).
            text_free = num_cond_latents if kv_cache is None else 0
            if group == nt and text_free > 0:
                x = self._cross_residual_after(x, text, text_mask, text_free)
            else:
                def cross(chunk, first_frame):
                    return self._cross_residual(chunk, first_frame, text, text_mask, text_free)

                x = over_frame_groups(cross, x, (), group)

        x = over_frame_groups(self._ffn_residual, x, (shift_mlp, scale_mlp, gate_mlp), group)
        return x.reshape(b, n, c), new_cache

    def _cross_residual_after(self, x: jax.Array, text, text_mask, text_free: int) -> jax.Array:
        """x [B, T, S, C] + cross attention of the frames after the first `text_free` (those get zeros). The update,
        not x, is joined from the two parts: with the tokens split over devices that moves only the update's
        slice between neighbours, never gathers x."""
        b, nt, s, c = x.shape
        n_free = text_free * s
        normed = self.cross_norm(x.reshape(b, nt * s, c))
        prequantized = self._prequantized_input(self.cross_attn.q, self.cross_norm, x)
        if prequantized is not None:
            prequantized = tuple(a[:, n_free:] for a in prequantized)
        noise_out = self.cross_attn(normed[:, n_free:], text, text_mask, prequantized)
        cross_out = jnp.concatenate([jnp.zeros((b, n_free, c), noise_out.dtype), noise_out], axis=1)
        return x + cross_out.astype(x.dtype).reshape(x.shape)

    def _cross_residual(self, x: jax.Array, first_frame, text, text_mask, text_free: int) -> jax.Array:
        """x [B, g, S, C] (frames first_frame ...) + its cross attention; frames below `text_free` keep x."""
        b, g, s, c = x.shape
        prequantized = self._prequantized_input(self.cross_attn.q, self.cross_norm, x)
        update = self.cross_attn(self.cross_norm(x.reshape(b, g * s, c)), text, text_mask, prequantized)
        update = update.reshape(x.shape)
        updated = x + update.astype(x.dtype)
        if text_free == 0:
            return updated
        frame = first_frame + jnp.arange(g)
        return jnp.where((frame < text_free)[None, :, None, None], x, updated)

    def _ffn_residual(self, x: jax.Array, first_frame, shift, scale, gate) -> jax.Array:
        """x [B, g, S, C] + gate * FFN(modulated x); shift, scale, gate: [B, g, 1, C] float32 of its frames."""
        del first_frame
        b, g, s, c = x.shape
        x_mod = modulate(self.ffn_norm, x, shift, scale).reshape(b, g * s, c)
        prequantized = self._prequantized_input(self.ffn.w1, self.ffn_norm, x, (shift, scale)) if self.ffn.fused_fp8 else None
        ffn_out = self.ffn(x_mod, prequantized)
        return gated_residual(x, gate, ffn_out.reshape(x.shape))

    def _prequantized_input(self, linear, norm: LayerNorm, x: jax.Array, modulation=None):
        """The per-token e4m3 form (xq [B, g*S, C], scale [B, g*S, 1]) of `linear`'s input, norm(x) modulated by
        `modulation` (shift, scale [B, g, 1, C]: adaLN) or by the norm's own weight and bias (None), computed from
        the float32 row (one rounding fewer than quantizing the bf16 input): on NVIDIA GPUs in one pass over x
        (`quantization.modulated_kernel`), elsewhere as XLA's fusions. None where `linear` cannot take it (not an
        FP8 per-token Linear, or with LoRAs), `row_kernels` is off (the arrays are split over devices, and XLA cannot
        split a kernel's rows) or C is not a power of two. x [B, g, S, C]. Its inputs take no gradient: the
        Linear's reaches them through its float input."""
        b, g, s, c = x.shape
        if not (isinstance(linear, QuantizedLinear) and linear.takes_prequantized and self.row_kernels
                and fits_row_kernel(c)):
            return None
        if modulation is None:
            weight = jnp.ones((c,), jnp.float32) if norm.scale is None else norm.scale.get_value()
            bias = jnp.zeros((c,), jnp.float32) if norm.bias is None else norm.bias.get_value()
            multiplier, offset, rows_per_group = weight.reshape(1, c), bias.reshape(1, c), b * g * s
        else:
            shift, scale = modulation
            multiplier, offset, rows_per_group = (1.0 + scale).reshape(-1, c), shift.reshape(-1, c), s

        def xla_form(x, multiplier, offset):  # as norm.normalize_f32 / modulate_f32 compute it, op for op
            shape = (1, 1, 1, c) if modulation is None else (b, g, 1, c)
            out = norm.standardize_f32(x) * multiplier.reshape(shape) + offset.reshape(shape)  # [B, g, S, C]
            return quantize_activations(out.reshape(b, g * s, c))

        def row_kernel(x, multiplier, offset):
            xq, x_scale = modulated_quantize(x.reshape(-1, c), multiplier, offset, rows_per_group=rows_per_group,
                                             eps=norm.eps)
            return xq.reshape(b, g * s, c), x_scale.reshape(b, g * s, 1)

        operands = [jax.lax.stop_gradient(a) for a in (x, multiplier.astype(jnp.float32), offset.astype(jnp.float32))]
        return jax.lax.platform_dependent(*operands, cuda=row_kernel, default=xla_form)
