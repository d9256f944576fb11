"""SwiGLU and its per-token e4m3 quantization in one pass over the w1/w3 FP8 GEMM outputs: a Pallas Triton kernel.

What XLA makes of the same arithmetic (`quantization.swiglu`) reads the two GEMM outputs twice, once for the
per-token amax and once to quantize, and its two fusions ran at 3.0 and 2.1 TB/s on an H200: 53 + 95 ms of the
4.6 s 480p `fp8-attention` step (2 x 37,440 tokens x 11,008; BENCHMARKS.md). Here one program takes one token row:
the row's hidden values stay in registers between its amax and its quantization, so each GEMM output is read once
and only the e4m3 row and its scale are written.

A row is loaded as one power-of-two block (Triton's tensors are powers of two), its columns past the FFN width
masked: 11,008 -> 16,384, over `ROW_WARPS` warps (128 float32 values a thread). Four warps measured fastest on an
H200 (`benchmarks/row_kernels.py`: 2.66 ms a call against 3.03 / 3.81 / 4.09 with 8 / 16 / 32; in the 480p step
118 ms against 130 with 8), though every choice stays near 1.5 TB/s: one row a program, no pipelining.

Shapes: gate_acc, up_acc [R, F] (the GEMMs' unscaled outputs, any float dtype); x_scale [R, 1] float32 (the
per-token scale of the GEMMs' shared e4m3 input); w1_scale, w3_scale [F] float32 (per channel). Returns
(hq [R, F] e4m3, h_scale [R, 1] float32) with silu(gate) * up ~= hq * h_scale, gate = gate_acc * x_scale * w1_scale
and up likewise: the values `quantization.swiglu`'s XLA form gives.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from longcat_jax.quantization.formats import FP8_E4M3
from longcat_jax.quantization.matmul import MIN_ACTIVATION_ABSMAX

ROW_WARPS = 4


def _swiglu_quantize_kernel(gate_ref, up_ref, x_scale_ref, w1_scale_ref, w3_scale_ref, hq_ref, h_scale_ref, *,
                            width: int):
    """One token row: gate_ref, up_ref, w1_scale_ref, w3_scale_ref, hq_ref [1, P] (columns >= width masked);
    x_scale_ref, h_scale_ref [1, 1]."""
    padded = gate_ref.shape[-1]
    valid = jax.lax.broadcasted_iota(jnp.int32, (1, padded), 1) < width  # [1, P]

    def load(ref):
        return plgpu.load(ref, mask=valid, other=0).astype(jnp.float32)

    x_scale = x_scale_ref[...]  # [1, 1]
    gate = load(gate_ref) * x_scale * load(w1_scale_ref)
    up = load(up_ref) * x_scale * load(w3_scale_ref)
    hidden = gate / (1.0 + jnp.exp(-gate)) * up  # [1, P]; zero in the masked columns
    absmax = jnp.max(jnp.abs(hidden), axis=1, keepdims=True)  # [1, 1]
    h_scale = jnp.maximum(absmax, MIN_ACTIVATION_ABSMAX) / FP8_E4M3.max_value
    h_scale_ref[...] = h_scale
    quantized = jnp.clip(hidden / h_scale, -FP8_E4M3.max_value, FP8_E4M3.max_value)
    plgpu.store(hq_ref, quantized.astype(FP8_E4M3.dtype), mask=valid)


@functools.partial(jax.jit, static_argnames=("interpret", "num_warps"))
def swiglu_quantize(gate_acc: jax.Array, up_acc: jax.Array, x_scale: jax.Array, w1_scale: jax.Array,
                    w3_scale: jax.Array, *, interpret: bool = False,
                    num_warps: int = ROW_WARPS) -> tuple[jax.Array, jax.Array]:
    """(hq [R, F] e4m3, h_scale [R, 1] float32) of silu(gate) * up (see the module docstring). `interpret`: Pallas'
    interpreter (any backend; the tests on the CPU), otherwise the Triton kernel (NVIDIA GPUs); num_warps: a
    program's warps (`benchmarks/row_kernels.py` compares them)."""
    rows, width = gate_acc.shape
    padded = pl.next_power_of_2(width)
    row_block = pl.BlockSpec((1, padded), lambda r: (r, 0))
    channel_block = pl.BlockSpec((1, padded), lambda r: (0, 0))
    scale_block = pl.BlockSpec((1, 1), lambda r: (r, 0))
    return pl.pallas_call(
        functools.partial(_swiglu_quantize_kernel, width=width),
        grid=(rows,),
        in_specs=[row_block, row_block, scale_block, channel_block, channel_block],
        out_specs=[row_block, scale_block],
        out_shape=[jax.ShapeDtypeStruct((rows, width), FP8_E4M3.dtype),
                   jax.ShapeDtypeStruct((rows, 1), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="swiglu_quantize",
    )(gate_acc, up_acc, x_scale.astype(jnp.float32), w1_scale.astype(jnp.float32)[None, :],
      w3_scale.astype(jnp.float32)[None, :])
