"""FP8 dense attention for the DiT's self attention (`--quantize fp8-attention`): cuDNN's FP8 flash attention on
Hopper and newer GPUs, the same roundings emulated in float32 on the CPU.

Why: at 480p the self attention is dense (cuDNN, both CFG branches) and takes about 3.85 s of the 6.9 s bf16 step
on an H200 (BENCHMARKS.md, "Quantized DiT step"); FP8 GEMMs cannot speed that part up, and cuDNN's FP8 attention
ran it 1.43x faster (`benchmarks/fp8_attention.py`).

What is computed, per call (q [B, Sq, H, D], k and v [B, Sk, H, D]):
- q, k and v quantized to e4m3 with one scale per tensor (absmax / 448);
- scores q.k in FP8 with float32 accumulation, softmax in float32;
- the unnormalised probabilities exp(s - rowmax), in [0, 1], quantized to e4m3 after scaling by 448, and
  multiplied with v in FP8; the row sums stay float32;
- the output written in e4m3 with a scale (448 / (absmax(v) * OUTPUT_HEADROOM): each output row is a convex
  combination of v's rows), then descaled to q's dtype. That rounding is most of the error: 2.6e-2 of 2.8e-2 relative
  L2 against float32 attention on the structured benchmark inputs (emulated on the CPU: quantizing only q and k
  gives 7.1e-3, only v 5.4e-3, only the probabilities 4.3e-3). A bf16 output would avoid it, but XLA refuses the
  FP8 attention call with a bf16 result ("Input datatypes do not match", jax 0.11.2 on an H200, 2026-12-03).

Measured on one H200 (2026-12-03, BENCHMARKS.md "FP8 attention in the DiT"): 1.44x / 1.52x bf16 cuDNN per call at
the 480p CFG batch / 84,480 tokens, 3.6e-2 from float32 attention per call; the whole 480p step 1.47x bf16, but its
output moved 2.3e-1 from bf16 on random weights (fp8 alone: 6.8e-2), each block's update by 8.6e-2 (block 0) to
2.6e-1 (block 47). Hence opt-in.

Only the forward exists (inference): training refuses this mode. The cuDNN call is a JAX internal
(`jax._src.cudnn.fused_attention_stablehlo.dot_product_attention(..., use_fp8=True)`), which is why it stays in this
one file.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from longcat_jax.errors import ConfigError
from longcat_jax.quantization.formats import FP8_E4M3, to_format
from longcat_jax.quantization.matmul import activation_scale, quantize_activations
from longcat_jax.quantization.modes import PER_TENSOR

PROBABILITY_SCALE = FP8_E4M3.max_value  # exp(s - rowmax) lies in [0, 1]: scaled to e4m3's whole range
OUTPUT_HEADROOM = 1.125  # e4m3 output: an output row is a convex combination of v's rows, plus rounding
MIN_ATTENTION_CAPABILITY = (9, 0)  # cuDNN's FP8 flash attention: Hopper and newer


def check_fp8_attention_shapes(q_shape, k_shape, v_shape) -> None:
    """Raises ConfigError naming the shapes unless cuDNN's FP8 attention takes them (head_dim a multiple of 16, at
    most 256; k and v alike; one batch and head count)."""
    if len(q_shape) != 4 or tuple(k_shape) != tuple(v_shape) or len(k_shape) != 4:
        raise ConfigError(f"FP8 attention takes q [B, Sq, H, D] and k, v [B, Sk, H, D] alike, got {q_shape=}, "
                          f"{k_shape=}, {v_shape=}")
    (b, _, h, d), (bk, _, hk, dk) = q_shape, k_shape
    if (b, h, d) != (bk, hk, dk):
        raise ConfigError(f"FP8 attention needs q and k with one batch, head count and head_dim: {q_shape=}, {k_shape=}")
    if d % 16 or d > 256:
        raise ConfigError(f"FP8 attention needs a head_dim that is a multiple of 16 and at most 256, got {d}; "
                          "use --quantize fp8 (bf16 attention) for this model")


def tensor_scales(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The per-tensor e4m3 scales of q, k and v that `fp8_attention` uses. Computed before the heads are split over
    devices (context parallelism) and handed to each device's call, they keep the result that of one device: scales
    taken over a device's own heads moved the tiny DiT's output by 7.7e-3 on 8 CPU devices (as much as FP8 attention
    itself moved it, 7.0e-3)."""
    return activation_scale(q, PER_TENSOR), activation_scale(k, PER_TENSOR), activation_scale(v, PER_TENSOR)


def output_scale(v_scale: jax.Array) -> jax.Array:
    """The per-tensor e4m3 scale of `fp8_attention`'s output, from v's (`tensor_scales`): the output is e4m3 values
    times this. The output projection's FP8 GEMM takes it as its activation scale (`SelfAttention`), so the output
    is not rounded a second time onto per-token scales."""
    return v_scale * OUTPUT_HEADROOM


def fp8_attention(q: jax.Array, k: jax.Array, v: jax.Array, scales=None) -> jax.Array:
    """Softmax attention q [B, Sq, H, D] over k, v [B, Sk, H, D] -> [B, Sq, H, D] in q's dtype, in FP8 (module doc).

    scales: None (this call's `tensor_scales`) or the (q, k, v) scales to use. On a GPU: cuDNN (compute capability
    9.0+; `longcat_jax.quantization.check_quantize_supported` refuses others before anything is loaded). Elsewhere:
    `emulated_fp8_attention`, the same roundings in float32."""
    check_fp8_attention_shapes(q.shape, k.shape, v.shape)
    scales = tensor_scales(q, k, v) if scales is None else scales
    if jax.default_backend() != "gpu":
        return emulated_fp8_attention(q, k, v, scales)
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    q_scale, k_scale, v_scale = scales
    q8, k8, v8 = (quantize_activations(x, PER_TENSOR, scale)[0] for x, scale in zip((q, k, v), scales))
    out_scale = 1.0 / output_scale(v_scale)  # the real output times this fills e4m3's range
    one = _scalar_operand(1.0)
    params = {name: one for name in cudnn.fp8_params_keys}  # the backward's scales: unused by the forward
    params.update(descale_q=_scalar_operand(q_scale), descale_k=_scalar_operand(k_scale),
                  descale_v=_scalar_operand(v_scale), scale_s=_scalar_operand(PROBABILITY_SCALE),
                  descale_s=_scalar_operand(1.0 / PROBABILITY_SCALE), scale_o=_scalar_operand(out_scale))
    out, _, _ = cudnn.dot_product_attention(q8, k8, v8, fp8_params=params, scale=1.0 / math.sqrt(q.shape[-1]),
                                            qkv_layout="BTNH", use_fp8=True)  # [B, Sq, H, D] e4m3
    return (out.astype(jnp.float32) / out_scale).astype(q.dtype)


def _rounded_to_e4m3(x: jax.Array, scale) -> jax.Array:
    """x rounded to e4m3 after dividing by `scale`, and back (float32). The optimization barrier keeps XLA from
    dropping the round trip: on the GPU it removed it (the emulation there came out 7x closer to float32 than
    cuDNN's FP8 attention)."""
    return lax.optimization_barrier(to_format(x / scale, FP8_E4M3)).astype(jnp.float32) * scale


def emulated_fp8_attention(q: jax.Array, k: jax.Array, v: jax.Array, scales=None) -> jax.Array:
    """`fp8_attention`'s arithmetic in float32 with its e4m3 roundings (the [B, H, Sq, Sk] scores are materialised:
    for the CPU and small models, and as the benchmark's reference for cuDNN's call); scales as there."""
    check_fp8_attention_shapes(q.shape, k.shape, v.shape)
    scales = tensor_scales(q, k, v) if scales is None else scales
    qf, kf, vf = (_rounded_to_e4m3(x.astype(jnp.float32), scale) for x, scale in zip((q, k, v), scales))
    scores = jnp.einsum("bqhd,bkhd->bhqk", qf, kf, precision="highest") / math.sqrt(q.shape[-1])  # [B, H, Sq, Sk]
    probabilities = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    row_sums = jnp.sum(probabilities, axis=-1)  # [B, H, Sq], float32, before the probabilities' rounding
    probabilities = _rounded_to_e4m3(probabilities, 1.0 / PROBABILITY_SCALE)
    out = jnp.einsum("bhqk,bkhd->bqhd", probabilities, vf, precision="highest")
    out = out / jnp.transpose(row_sums, (0, 2, 1))[..., None]
    return _rounded_to_e4m3(out, output_scale(scales[2])).astype(q.dtype)


def _scalar_operand(x) -> jax.Array:
    return jnp.reshape(jnp.asarray(x, jnp.float32), (1, 1, 1, 1))
