"""The matmuls of a quantized Linear: FP8 x FP8 GEMM with dynamic activation scales, and weight-only.

How these are written decides what XLA runs (the probe in issue 22: an H200, jax 0.11.2, 168,960 x 4096 x 12288):
`lax.dot_general` directly on two e4m3 operands, the activations quantized inside the same jitted function
and the scales applied to the float output afterwards, compiles to cuBLASLt's FP8 GEMM
(`__cublas$lt$matmul$f8`, 1.71x the bf16 GEMM including the quantization, once XLA's Triton GEMMs are off: see
`compile_options`); dequantizing the e4m3 operands
first and then calling dot compiles to a plain bf16 GEMM. `linear_hlo` returns the compiled program of one
FP8 Linear so a test can check which one XLA chose.

Shapes: x [..., K] activations; qkernel [N, K] (each output channel a row, contracting dimension minor for
both operands: the layout cuBLASLt's FP8 GEMM needs, so no transpose is inserted); qscale [N] float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from longcat_jax.quantization.compile_options import FP8_GPU_COMPILER_OPTIONS
from longcat_jax.quantization.formats import FP8_E4M3, to_format
from longcat_jax.quantization.modes import FP8_COMPUTE, PER_TENSOR, PER_TOKEN, QuantScheme

# Activations whose absolute maximum is below this quantize as zeros (their scale is floored here).
MIN_ACTIVATION_ABSMAX = 1e-12


def _contract_last(x: jax.Array):
    """dot_general dimensions contracting x's last axis with the kernel's axis 1 ([N, K])."""
    return ((x.ndim - 1,), (1,)), ((), ())


def activation_scale(x: jax.Array, scaling: str = PER_TOKEN) -> jax.Array:
    """The e4m3 scale of x [..., K]: float32 [..., 1] per token, [] per tensor (its absolute maximum over e4m3's)."""
    xf = x.astype(jnp.float32)
    if scaling == PER_TOKEN:
        absmax = jnp.max(jnp.abs(xf), axis=-1, keepdims=True)
    elif scaling == PER_TENSOR:
        absmax = jnp.max(jnp.abs(xf))
    else:
        raise ValueError(f"activation scaling must be {PER_TOKEN!r} or {PER_TENSOR!r}, got {scaling!r}")
    return jnp.maximum(absmax, MIN_ACTIVATION_ABSMAX) / FP8_E4M3.max_value


def quantize_activations(x: jax.Array, scaling: str = PER_TOKEN,
                         scale: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x [..., K] -> (xq [..., K] e4m3, scale float32: [..., 1] per token, [] per tensor), x ~= xq * scale.

    `scale`: one computed before (`activation_scale`), e.g. a per-tensor scale of all rows when x is a chunk of
    them; None: x's own."""
    xf = x.astype(jnp.float32)
    if scale is None:
        scale = activation_scale(xf, scaling)
    return to_format(xf / scale, FP8_E4M3), scale


def fp8_dot(x: jax.Array, qkernel: jax.Array, qscale: jax.Array, *, scaling: str = PER_TOKEN,
            gemm_dtype=jnp.float32, x_scale: jax.Array | None = None) -> jax.Array:
    """x [..., K] @ dequantized(qkernel [N, K] e4m3).T as one FP8 GEMM -> float32 [..., N].

    The activations are quantized here (inside the caller's jit; with `x_scale` if given, see
    `quantize_activations`), the GEMM takes both e4m3 operands and accumulates in float32, and its `gemm_dtype`
    output is scaled per token (or tensor) and per channel.
    """
    return prequantized_dot(*quantize_activations(x, scaling, x_scale), qkernel, qscale, gemm_dtype=gemm_dtype)


def prequantized_dot(xq: jax.Array, x_scale: jax.Array, qkernel: jax.Array, qscale: jax.Array, *,
                     gemm_dtype=jnp.float32) -> jax.Array:
    """(xq [..., K] e4m3, x_scale [..., 1] or []) @ dequantized(qkernel [N, K]).T -> float32 [..., N]: the FP8 GEMM
    on activations already quantized, its `gemm_dtype` output scaled per token (or tensor) and per channel."""
    return e4m3_gemm(xq, qkernel, gemm_dtype).astype(jnp.float32) * x_scale * qscale.astype(jnp.float32)


def e4m3_gemm(xq: jax.Array, qkernel: jax.Array, gemm_dtype=jnp.float32) -> jax.Array:
    """xq [..., K] e4m3 @ qkernel [N, K] e4m3 .T -> [..., N] in `gemm_dtype`, unscaled: the FP8 GEMM itself."""
    # Precision DEFAULT: the operands are e4m3 already, and a global "highest" default must not change the GEMM.
    return lax.dot_general(xq, qkernel, _contract_last(xq), precision=lax.Precision.DEFAULT,
                           preferred_element_type=gemm_dtype)


def straight_through_input_grad(grad: jax.Array, qkernel: jax.Array, qscale: jax.Array, dtype) -> jax.Array:
    """The input gradient of x [..., K] -> x @ dequantized(qkernel [N, K]).T with the activation quantization taken
    as the identity: grad [..., N] @ dequantized(qkernel), one GEMM in `dtype` with the weight converted inside it
    and its per-channel scale on the gradient -> float32 [..., K]. Differentiating the FP8 GEMM itself would round
    the gradient to e4m3 (3 mantissa bits, nothing below 2^-9)."""
    scaled = (grad * qscale.astype(jnp.float32)).astype(dtype)  # [..., N]
    return lax.dot_general(scaled, qkernel.astype(dtype), (((grad.ndim - 1,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)


def weight_only_dot(x: jax.Array, qkernel: jax.Array, qscale: jax.Array) -> jax.Array:
    """x [..., K] @ dequantized(qkernel [N, K]).T with the weight converted to x's dtype inside the matmul.

    INT8 and e4m3 values are exact in bfloat16, so the conversion loses nothing and the per-channel scale can
    be applied to the float32 output instead of the weight: XLA fuses the convert into the GEMM's operand
    read and no scaled copy of the weight is formed.
    """
    acc = lax.dot_general(x, qkernel.astype(x.dtype), _contract_last(x), preferred_element_type=jnp.float32)
    return acc * qscale.astype(jnp.float32)


def quantized_dot(x: jax.Array, qkernel: jax.Array, qscale: jax.Array, scheme: QuantScheme, *,
                  x_scale: jax.Array | None = None) -> jax.Array:
    """The matmul of `scheme` (FP8 GEMM, writing the scheme's gemm_dtype, or weight-only): x [..., K] -> float32
    [..., N]. `x_scale`: the FP8 activation scale computed before (`activation_scale`; None: x's own); weight-only
    ignores it."""
    if scheme.compute == FP8_COMPUTE:
        return fp8_dot(x, qkernel, qscale, scaling=scheme.activation_scaling, gemm_dtype=jnp.dtype(scheme.gemm_dtype),
                       x_scale=x_scale)
    return weight_only_dot(x, qkernel, qscale)


def _linear_args(tokens: int, in_features: int, out_features: int, scheme: QuantScheme, dtype):
    return (jax.ShapeDtypeStruct((tokens, in_features), dtype),
            jax.ShapeDtypeStruct((out_features, in_features), scheme.weight.dtype),
            jax.ShapeDtypeStruct((out_features,), jnp.float32))


def _linear_fn(scheme: QuantScheme, dtype):
    def linear(x, qkernel, qscale):
        return quantized_dot(x, qkernel, qscale, scheme).astype(dtype)

    return linear


def linear_stablehlo(tokens: int, in_features: int, out_features: int, scheme: QuantScheme, *,
                     dtype=jnp.bfloat16) -> str:
    """The lowered StableHLO text of one quantized Linear x [tokens, in] -> [tokens, out] (no compilation)."""
    fn = _linear_fn(scheme, dtype)
    return jax.jit(fn).lower(*_linear_args(tokens, in_features, out_features, scheme, dtype)).as_text()


def linear_hlo(tokens: int, in_features: int, out_features: int, scheme: QuantScheme, *,
               dtype=jnp.bfloat16, device: jax.Device | None = None) -> str:
    """The compiled (optimized) HLO text of one quantized Linear on `device` (default: the first device).

    On a Hopper GPU with FP8 compute it should call `__cublas$lt$matmul$f8`; `CUBLAS_FP8_GEMM` is that name. It is
    compiled with the options the DiT's FP8 programs get (`compile_options.quantized_jit`).
    """
    device = device or jax.devices()[0]
    args = _linear_args(tokens, in_features, out_features, scheme, dtype)
    sharding = jax.sharding.SingleDeviceSharding(device)
    args = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in args)
    options = FP8_GPU_COMPILER_OPTIONS if device.platform == "gpu" and scheme.weight == FP8_E4M3 else None
    return jax.jit(_linear_fn(scheme, dtype), compiler_options=options).lower(*args).compile().as_text()


CUBLAS_FP8_GEMM = "__cublas$lt$matmul$f8"
