"""Self and cross attention of the DiT, behind one attention interface (dense or block-sparse).

Layout everywhere: q, k, v are [B, S, H, D] (the `jax.nn.dot_product_attention` convention), tokens
in (T, H, W) raster order of the latent grid. The dense backend is `jax.nn.dot_product_attention`
(cuDNN on GPU, XLA elsewhere); the block-sparse backend is `kernels.bsa_attention`, used as in the
original only when the latent has more than one frame.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from kernels import (
    BSAParams,
    GridPadding,
    KernelConfig,
    block_mask_from_indices,
    bsa_attention,
    bsa_selection,
    fp8_forward_available,
)
from longcat_jax.errors import InputError
from longcat_jax.models.dit.layers import Linear, RMSNorm
from longcat_jax.models.dit.quantized_linear import QuantizedLinear
from longcat_jax.models.dit.rope import apply_rope, rope_tables
from longcat_jax.quantization.attention import fp8_attention, output_scale, tensor_scales
from longcat_jax.quantization.modes import FP8_COMPUTE

_log = logging.getLogger(__name__)

Grid = tuple[int, int, int]
KV = tuple[jax.Array, jax.Array]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, grid_q: Grid, grid_k: Grid, bsa: BSAParams | None,
           bsa_backend: str = "auto", bsa_kernel_config: KernelConfig | None = None,
           context_parallel=None, fp8: bool = False, fp8_scales=None) -> jax.Array:
    """Softmax attention q [B, Sq, H, D] over k, v [B, Sk, H, D] -> [B, Sq, H, D].

    With `bsa` set, each query chunk attends only to its selected key chunks (grids give the
    (T, H, W) layout of q and k tokens) by `kernels.bsa_attention` with `bsa_backend` and `bsa_kernel_config`
    (the Pallas kernels and their settings; None: the defaults); otherwise full dense attention. With `fp8` (the mode
    'fp8-attention') both in FP8: the block-sparse one by `KernelConfig(fp8=True)`, the dense one by
    `longcat_jax.quantization.attention` (with `fp8_scales` if given, else the call's own per-tensor scales). With
    `context_parallel` (a `longcat_jax.sharding.ContextParallel`) each device attends for its slice of the heads; dense
    FP8 attention then takes its scales from all heads, so the result does not depend on the number of devices
    (block-sparse FP8 scales each 64-token block of each head on its own).
    """
    if context_parallel is not None:
        if fp8 and bsa is None and fp8_scales is None:
            fp8_scales = tensor_scales(q, k, v)
        local = functools.partial(attend, grid_q=grid_q, grid_k=grid_k, bsa=bsa, bsa_backend=bsa_backend,
                                  bsa_kernel_config=bsa_kernel_config, fp8=fp8, fp8_scales=fp8_scales)
        return context_parallel.head_parallel(local, q, k, v)
    if bsa is not None:
        if fp8 and fp8_forward_available(bsa_backend):
            bsa_kernel_config = dataclasses.replace(bsa_kernel_config or KernelConfig(), fp8=True)
        elif fp8:
            _warn_bsa_stays_bf16()
        return bsa_attention(q, k, v, grid_q, grid_k, bsa, backend=bsa_backend, kernel_config=bsa_kernel_config)
    if fp8:
        return fp8_attention(q, k, v, fp8_scales)
    return dense_attention(q, k, v)


@functools.cache
def _warn_bsa_stays_bf16() -> None:
    """Says once (not once per block and trace) that 'fp8-attention' keeps block-sparse attention in bf16 here."""
    _log.warning("--quantize fp8-attention: the FP8 block-sparse kernel needs a Hopper GPU; block-sparse attention "
                 "stays bf16 on this device (dense attention runs in FP8)")


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Full softmax attention q [B, Sq, H, D] over k, v [B, Sk, H, D] -> [B, Sq, H, D].

    On a GPU with 16-bit inputs this is cuDNN's fused flash attention (the original calls
    flash-attn there): `jax.nn.dot_product_attention` left to itself takes the XLA path, which
    materialises the [B, H, Sq, Sk] scores, 457 GB at 84,480 tokens. Elsewhere (CPU, float32) XLA.
    """
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0:
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


class SelfAttention(nnx.Module):
    """Fused qkv projection, per-head RMSNorm on q and k, 3D RoPE, attention, output projection.

    The call's `bsa` (the DiT's one setting, `LongCatDiT.set_bsa`) makes it block-sparse for latents of more
    than one frame. With `record_selection` on, each block-sparse call also sows its selected-block mask
    [B, H, Mq, Mk] as an `nnx.Intermediate` named `bsa_selection`, to be collected with `nnx.capture`
    (a diagnostic: it recomputes the selection). `context_parallel` (set by
    `LongCatDiT.set_context_parallel`) splits the heads over devices for the attention itself (Ulysses).
    `fp8_attention` (set by `LongCatDiT.set_fp8_attention`, the mode 'fp8-attention') runs the attention in FP8,
    dense and block-sparse.
    """

    def __init__(self, hidden_size: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.record_selection = False
        self.context_parallel = None
        self.fp8_attention = False
        self.qkv = Linear(hidden_size, 3 * hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.q_norm = RMSNorm(self.head_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.k_norm = RMSNorm(self.head_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.proj = Linear(hidden_size, hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def _attend(self, q, k, v, grid_q: Grid, grid_k: Grid, bsa: BSAParams | None, bsa_backend: str,
                bsa_kernel_config: KernelConfig | None, fp8_scales=None) -> jax.Array:
        if bsa is not None and self.record_selection:
            indices, counts = bsa_selection(q, k, grid_q, grid_k, bsa)
            num_k_blocks = GridPadding.of(grid_k, bsa.chunk_3d_shape_k).num_blocks
            self.sow(nnx.Intermediate, "bsa_selection", block_mask_from_indices(indices, counts, num_k_blocks))
        return attend(q, k, v, grid_q=grid_q, grid_k=grid_k, bsa=bsa, bsa_backend=bsa_backend,
                      bsa_kernel_config=bsa_kernel_config, context_parallel=self.context_parallel,
                      fp8=self.fp8_attention, fp8_scales=fp8_scales)

    def __call__(self, x: jax.Array, grid: Grid, *, bsa: BSAParams | None = None, bsa_backend: str = "auto",
                 bsa_kernel_config: KernelConfig | None = None, num_cond_latents: int = 0,
                 kv_cache: KV | None = None, return_kv: bool = False,
                 prequantized: tuple[jax.Array, jax.Array] | None = None) -> tuple[jax.Array, KV | None]:
        """x: [B, N, C] with N = T*H*W of `grid`; prequantized: x's per-token e4m3 form for an FP8 qkv Linear
        (`QuantizedLinear.__call__`), or None.

        bsa: block-sparse parameters (None: dense); as the original, used only when the latent has more than
            one frame. bsa_backend, bsa_kernel_config: `kernels.bsa_attention`'s backend and kernel_config.

        num_cond_latents: the first frames are conditions; their queries see only condition keys.
        kv_cache: (k, v) [B or 1, Nc, H, D] of `num_cond_latents` condition frames from an earlier
            call (after RMSNorm, before RoPE); x then holds only the frames after them.
        Returns (out [B, N, C], (k, v) [B, N, H, D] after RMSNorm and before RoPE if return_kv else None).
        """
        b, n, c = x.shape
        nt, nh, nw = grid
        qkv = (self.qkv(x) if prequantized is None else self.qkv(x, prequantized=prequantized))
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim)
        q = self.q_norm(qkv[:, :, 0])  # [B, N, H, D]
        k = self.k_norm(qkv[:, :, 1])
        v = qkv[:, :, 2]
        if self.context_parallel is not None:
            # Token-split -> head-split (all-to-all), so the condition/noise split below is local.
            q, k, v = (self.context_parallel.shard_heads(t) for t in (q, k, v))
        new_cache = (k, v) if return_kv else None

        # As the original: block-sparse only for videos (more than one latent frame).
        attend_with = functools.partial(self._attend, bsa=bsa if nt > 1 else None, bsa_backend=bsa_backend,
                                        bsa_kernel_config=bsa_kernel_config)
        x_scale = None  # the projection's FP8 activation scale, where the attention output is on one
        if kv_cache is not None:
            out = self._attend_after_cache(q, k, v, grid, num_cond_latents, kv_cache, attend_with)
        else:
            cos, sin = rope_tables(grid, self.head_dim)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if num_cond_latents > 0:
                n_cond = num_cond_latents * nh * nw
                cond_grid = (num_cond_latents, nh, nw)
                out_cond = attend_with(q[:, :n_cond], k[:, :n_cond], v[:, :n_cond], cond_grid, cond_grid)
                out_noise = attend_with(q[:, n_cond:], k, v, (nt - num_cond_latents, nh, nw), grid)
                out = jnp.concatenate([out_cond, out_noise], axis=1)
            else:
                # one dense FP8 call writes e4m3 values times output_scale(v's scale): the projection's FP8 GEMM
                # takes them on that scale, from the same scales, rather than rounding them again per token
                scales = tensor_scales(q, k, v) if self._proj_takes_fp8_output() and (bsa is None or nt == 1) else None
                out = attend_with(q, k, v, grid, grid, fp8_scales=scales)
                x_scale = None if scales is None else output_scale(scales[2])
        return self._project(out, x_scale), new_cache

    def _project(self, out: jax.Array, x_scale: jax.Array | None) -> jax.Array:
        """The output projection of out [B, N, H, D] (head-split under context parallelism) -> [B, N, C]; x_scale:
        the FP8 attention output's scale for the FP8 projection, or None."""
        if self.context_parallel is not None:
            out = self.context_parallel.shard_tokens(out)  # back to token-split: all-to-all
        out = out.reshape(*out.shape[:2], -1)
        return self.proj(out) if x_scale is None else self.proj(out, x_scale=x_scale)

    def _proj_takes_fp8_output(self) -> bool:
        """Whether the dense attention runs in FP8 and the output projection is an FP8 GEMM."""
        return (self.fp8_attention and isinstance(self.proj, QuantizedLinear)
                and self.proj.scheme.compute == FP8_COMPUTE)

    def _attend_after_cache(self, q, k, v, grid: Grid, num_cond_latents: int, kv_cache: KV, attend_with) -> jax.Array:
        """Queries of the new frames over [cached condition keys, new keys], RoPE over the joint grid;
        `attend_with(q, k, v, grid_q, grid_k)` is the attention with this call's BSA setting."""
        b = q.shape[0]
        nt, nh, nw = grid
        k_cache, v_cache = kv_cache
        if num_cond_latents <= 0:
            raise InputError("a kv_cache needs num_cond_latents > 0 (the number of cached condition frames)")
        expected = (num_cond_latents * nh * nw, self.num_heads, self.head_dim)
        if tuple(k_cache.shape[1:]) != expected or k_cache.shape[0] not in (1, b) or v_cache.shape != k_cache.shape:
            raise InputError(
                f"kv_cache k/v shapes {tuple(k_cache.shape)}/{tuple(v_cache.shape)} do not fit "
                f"{num_cond_latents} condition frames of a {nh}x{nw} grid: expected [1 or {b}, *{expected}]"
            )
        k_cache = jnp.broadcast_to(k_cache.astype(k.dtype), (b, *expected))
        v_cache = jnp.broadcast_to(v_cache.astype(v.dtype), (b, *expected))
        full_grid = (num_cond_latents + nt, nh, nw)
        cos, sin = rope_tables(full_grid, self.head_dim)
        k_full = apply_rope(jnp.concatenate([k_cache, k], axis=1), cos, sin)
        v_full = jnp.concatenate([v_cache, v], axis=1)
        n_cond = expected[0]
        q = apply_rope(q, cos[n_cond:], sin[n_cond:])
        return attend_with(q, k_full, v_full, grid, full_grid)


class CrossAttention(nnx.Module):
    """Attention of the video tokens to the text tokens of their own batch item (variable length via a mask)."""

    def __init__(self, hidden_size: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q = Linear(hidden_size, hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.kv = Linear(hidden_size, 2 * hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.q_norm = RMSNorm(self.head_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.k_norm = RMSNorm(self.head_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.proj = Linear(hidden_size, hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, text: jax.Array, text_mask: jax.Array | None,
                 prequantized: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """x: [B, N, C]; text: [B, L, C]; text_mask: [B, L] bool (True = a real token) or None (all real);
        prequantized: x's per-token e4m3 form for an FP8 q Linear (`QuantizedLinear.__call__`), or None."""
        b, n, c = x.shape
        length = text.shape[1]
        q = self.q(x) if prequantized is None else self.q(x, prequantized=prequantized)
        q = self.q_norm(q.reshape(b, n, self.num_heads, self.head_dim))
        kv = self.kv(text).reshape(b, length, 2, self.num_heads, self.head_dim)
        k = self.k_norm(kv[:, :, 0])
        v = kv[:, :, 1]
        if text_mask is None:
            out = dense_attention(q, k, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=text_mask[:, None, None, :])
            # An item without any text token gets no cross-attention update (softmax over nothing).
            out = jnp.where(jnp.any(text_mask, axis=1)[:, None, None, None], out, jnp.zeros_like(out))
        return self.proj(out.reshape(b, n, c))
