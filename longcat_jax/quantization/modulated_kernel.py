"""LayerNorm, its modulation and per-token e4m3 quantization of a GEMM input in one pass: a Pallas Triton kernel.

The inputs of a DiT block's FP8 GEMMs are LayerNorm(x) * multiplier + offset (adaLN: 1 + scale and shift per latent
frame, for the self attention and the FFN; the cross attention's norm: its own weight and bias), quantized per token.
XLA computes the row's mean, variance and absolute maximum in separate fusions, each reading the row again, and
recomputes the block's residual sums in each of them: for the FFN input 22.5 + 15.9 ms of the 4.6 s 480p
`fp8-attention` step on an H200, for the cross attention's 58.8 + 48.3 ms (BENCHMARKS.md). Here one program takes one
token row of the materialised x and keeps it in registers for all three reductions, so x is read once and only the
e4m3 row and its scale are written.

Shapes: x [R, C] (C a power of two: Triton's tensors are; the DiT's 4,096), multiplier, offset [G, C] float32 with
`rows_per_group` consecutive rows per group (the tokens of one latent frame share its modulation; one group for a
norm's own weight and bias). Returns (xq [R, C] e4m3, x_scale [R, 1] float32), xq * x_scale ~= the row, as
`quantize_activations` of the float32 row gives it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from longcat_jax.quantization.formats import FP8_E4M3
from longcat_jax.quantization.matmul import MIN_ACTIVATION_ABSMAX

# Four warps: 0.51 ms a call in the 480p step on an H200, 0.53 with 16 (which `benchmarks/row_kernels.py` alone put
# ahead: 0.81 against 0.91 ms).
ROW_WARPS = 4


def fits_row_kernel(width: int) -> bool:
    """Whether rows of `width` channels load as one Triton block (a power of two)."""
    return width > 0 and width & (width - 1) == 0


def _modulated_quantize_kernel(x_ref, multiplier_ref, offset_ref, xq_ref, x_scale_ref, *, eps: float):
    """One token row: x_ref, multiplier_ref, offset_ref, xq_ref [1, C]; x_scale_ref [1, 1]."""
    x = x_ref[...].astype(jnp.float32)
    mean = jnp.mean(x, axis=1, keepdims=True)
    centered = x - mean
    variance = jnp.mean(centered * centered, axis=1, keepdims=True)
    modulated = centered * jax.lax.rsqrt(variance + eps) * multiplier_ref[...] + offset_ref[...]  # [1, C]
    absmax = jnp.max(jnp.abs(modulated), axis=1, keepdims=True)
    x_scale = jnp.maximum(absmax, MIN_ACTIVATION_ABSMAX) / FP8_E4M3.max_value
    x_scale_ref[...] = x_scale
    quantized = jnp.clip(modulated / x_scale, -FP8_E4M3.max_value, FP8_E4M3.max_value)
    xq_ref[...] = quantized.astype(FP8_E4M3.dtype)


@functools.partial(jax.jit, static_argnames=("rows_per_group", "eps", "interpret", "num_warps"))
def modulated_quantize(x: jax.Array, multiplier: jax.Array, offset: jax.Array, *, rows_per_group: int, eps: float,
                       interpret: bool = False, num_warps: int = ROW_WARPS) -> tuple[jax.Array, jax.Array]:
    """(xq [R, C] e4m3, x_scale [R, 1] float32) of LayerNorm(x) * multiplier + offset (see the module docstring).
    `interpret`: Pallas' interpreter (any backend; the tests on the CPU), otherwise the Triton kernel (NVIDIA GPUs);
    num_warps: a program's warps (`benchmarks/row_kernels.py` compares them)."""
    rows, width = x.shape
    if not fits_row_kernel(width):
        raise ValueError(f"the row kernel needs a power-of-two width, got {width=}")
    if rows != multiplier.shape[0] * rows_per_group or multiplier.shape != offset.shape:
        raise ValueError(f"{rows=} tokens need {rows // rows_per_group} multiplier/offset rows of {rows_per_group=}, "
                         f"got {multiplier.shape=} and {offset.shape=}")
    row_block = pl.BlockSpec((1, width), lambda r: (r, 0))
    group_block = pl.BlockSpec((1, width), lambda r: (r // rows_per_group, 0))
    return pl.pallas_call(
        functools.partial(_modulated_quantize_kernel, eps=eps),
        grid=(rows,),
        in_specs=[row_block, group_block, group_block],
        out_specs=[row_block, pl.BlockSpec((1, 1), lambda r: (r, 0))],
        out_shape=[jax.ShapeDtypeStruct((rows, width), FP8_E4M3.dtype),
                   jax.ShapeDtypeStruct((rows, 1), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="modulated_quantize",
    )(x, multiplier.astype(jnp.float32), offset.astype(jnp.float32))
