"""The FP8 SwiGLU FFN, w2(silu(w1 x) * w3 x), with its hidden activation quantized for w2 straight from the GEMMs.

Run as three quantized Linears, the hidden activation h [tokens, ffn] is written in bf16 by the SwiGLU, read by a
per-token amax pass and read again by the pass that quantizes it for w2's FP8 GEMM: at the 480p CFG batch
(2 x 37,440 tokens x 11,008) those were 105 + 18 + 51 ms of a 4.55 s `fp8-attention` step on an H200
(BENCHMARKS.md, "Where the 480p fp8-attention step's time goes"). Here h exists only in e4m3. The w1 and w3 GEMMs'
unscaled outputs are read twice instead: once by the per-token amax reduction and once by the quantization, each
recomputing the scales and the SwiGLU in float32 on the fly. XLA would merge the two identical recomputations into
one array with two readers and write it; an optimization barrier on the GEMM outputs (no copy: it passes the same
buffers on) gives the second reader inputs of its own, so each recomputation fuses into its one consumer. On NVIDIA
GPUs the amax and the quantization are one Pallas Triton kernel instead (`swiglu_kernel`), which reads each GEMM
output once; `row_kernel=False` keeps the XLA form there too (the DiT's FFN asks for it when its tokens are split
over devices: XLA's sharding propagation cannot split a kernel's rows, and would gather them).

The numbers are those of the three Linears except for two roundings fewer: the gate and up projections and h are no
longer rounded to bf16 before h is quantized. Gradients (LoRA training on an FP8 base) are straight-through, as in
`QuantizedLinear`: every activation quantization is taken as the identity.

Shapes: x [..., C]; w1, w3 (qkernel [F, C] e4m3, qscale [F]); w2 (qkernel [C, F] e4m3, qscale [C]).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from longcat_jax.quantization.formats import FP8_E4M3, to_format
from longcat_jax.quantization.matmul import (
    activation_scale,
    e4m3_gemm,
    prequantized_dot,
    quantize_activations,
    straight_through_input_grad,
)
from longcat_jax.quantization.modes import PER_TOKEN
from longcat_jax.quantization.swiglu_kernel import swiglu_quantize

QuantizedWeight = tuple[jax.Array, jax.Array]  # (qkernel [out, in] e4m3, qscale [out] float32)


def _gate_and_up(gate_acc: jax.Array, up_acc: jax.Array, x_scale: jax.Array, w1_scale: jax.Array,
                 w3_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The w1 and w3 outputs in float32 [..., F] from their unscaled FP8 GEMM results and the scales."""
    gate = gate_acc.astype(jnp.float32) * x_scale * w1_scale.astype(jnp.float32)
    up = up_acc.astype(jnp.float32) * x_scale * w3_scale.astype(jnp.float32)
    return gate, up


def _hidden(gate_acc, up_acc, x_scale, w1_scale, w3_scale) -> jax.Array:
    """silu(gate) * up in float32 [..., F]."""
    gate, up = _gate_and_up(gate_acc, up_acc, x_scale, w1_scale, w3_scale)
    return jax.nn.silu(gate) * up


def quantized_hidden_xla(gate_acc, up_acc, x_scale, w1_scale, w3_scale) -> tuple[jax.Array, jax.Array]:
    """(hq [..., F] e4m3, h_scale [..., 1]) of silu(gate) * up, written for XLA: two recomputations kept apart."""
    h_scale = activation_scale(_hidden(gate_acc, up_acc, x_scale, w1_scale, w3_scale), PER_TOKEN)  # [..., 1]
    gate_again, up_again = lax.optimization_barrier((gate_acc, up_acc))
    hq = to_format(_hidden(gate_again, up_again, x_scale, w1_scale, w3_scale) / h_scale, FP8_E4M3)
    return hq, h_scale


def _quantized_hidden_kernel(gate_acc, up_acc, x_scale, w1_scale, w3_scale) -> tuple[jax.Array, jax.Array]:
    """`quantized_hidden_xla`'s result from the Triton row kernel, the leading axes flattened into rows."""
    lead, width = gate_acc.shape[:-1], gate_acc.shape[-1]
    hq, h_scale = swiglu_quantize(gate_acc.reshape(-1, width), up_acc.reshape(-1, width), x_scale.reshape(-1, 1),
                                  w1_scale, w3_scale)
    return hq.reshape(*lead, width), h_scale.reshape(*lead, 1)


def _forward(x, w1, w3, w2, gemm_dtype, row_kernel, prequantized):
    """(y float32 [..., C], residuals for the backward)."""
    xq, x_scale = quantize_activations(x, PER_TOKEN) if prequantized is None else prequantized  # [..., C] e4m3, [..., 1]
    gate_acc = e4m3_gemm(xq, w1[0], gemm_dtype)  # [..., F]
    up_acc = e4m3_gemm(xq, w3[0], gemm_dtype)  # [..., F]
    operands = (gate_acc, up_acc, x_scale, w1[1], w3[1])
    if row_kernel:
        hq, h_scale = lax.platform_dependent(*operands, cuda=_quantized_hidden_kernel, default=quantized_hidden_xla)
    else:
        hq, h_scale = quantized_hidden_xla(*operands)
    y = prequantized_dot(hq, h_scale, *w2, gemm_dtype=gemm_dtype)  # [..., C]
    return y, (gate_acc, up_acc, x_scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def fp8_swiglu_ffn(x: jax.Array, w1: QuantizedWeight, w3: QuantizedWeight, w2: QuantizedWeight, gemm_dtype,
                   dtype, row_kernel: bool, prequantized: tuple[jax.Array, jax.Array] | None) -> jax.Array:
    """w2(silu(w1 x) * w3 x) with FP8 GEMMs and per-token activation scales: x [..., C] in `dtype` -> float32
    [..., C]. gemm_dtype: the FP8 GEMMs' output dtype (`QuantScheme.gemm_dtype`); dtype: x's (static, so the
    backward returns the input gradient in it); row_kernel: the Triton row kernel on NVIDIA GPUs (see the module
    docstring); prequantized: x's per-token e4m3 form (xq [..., C], x_scale [..., 1]) made by the caller
    (`modulated_kernel`), used instead of quantizing x here; x then only carries the gradient, and XLA drops its
    computation from a forward pass."""
    return _forward(x, w1, w3, w2, gemm_dtype, row_kernel, prequantized)[0]


def _fp8_swiglu_ffn_fwd(x, w1, w3, w2, gemm_dtype, dtype, row_kernel, prequantized):
    y, (gate_acc, up_acc, x_scale) = _forward(x, w1, w3, w2, gemm_dtype, row_kernel, prequantized)
    return y, (gate_acc, up_acc, x_scale, w1, w3, w2)


def _fp8_swiglu_ffn_bwd(gemm_dtype, dtype, row_kernel, residuals, grad):
    gate_acc, up_acc, x_scale, w1, w3, w2 = residuals
    gate, up = _gate_and_up(gate_acc, up_acc, x_scale, w1[1], w3[1])  # [..., F]
    d_hidden = straight_through_input_grad(grad, *w2, dtype)  # [..., F]
    sigmoid = jax.nn.sigmoid(gate)
    d_gate = d_hidden * up * sigmoid * (1.0 + gate * (1.0 - sigmoid))
    d_up = d_hidden * gate * sigmoid
    dx = straight_through_input_grad(d_gate, *w1, dtype) + straight_through_input_grad(d_up, *w3, dtype)
    return dx.astype(dtype), None, None, None, None


fp8_swiglu_ffn.defvjp(_fp8_swiglu_ffn_fwd, _fp8_swiglu_ffn_bwd)
