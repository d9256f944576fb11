"""FP8 dense attention for the DiT's self attention (`--quantize fp8-attention`): cuDNN's FP8 flash attention on
Hopper and newer GPUs, the same arithmetic emulated in float32 on the CPU.

Why: at 480p the self attention is dense (cuDNN, both CFG branches) and takes about 3.85 s of the 6.9 s bf16 step
on an H200 (BENCHMARKS.md, "Quantized DiT step"); FP8 GEMMs cannot speed that part up, and cuDNN's FP8 attention
ran it 1.43x faster (`benchmarks/fp8_attention.py`).

What is computed, per call (q [B, Sq, H, D], k and v [B, Sk, H, D]):
- q, k and v quantized to e4m3 with one scale per tensor (absmax / 448);
- scores q.k in FP8 with float32 accumulation, softmax in float32;
- the unnormalised probabilities exp(s - rowmax), in [0, 1], quantized to e4m3 after scaling by 448, and
  multiplied with v in FP8; the row sums stay float32;
- the output written in bf16 (`OUTPUT_BF16`, this module's own cuDNN call) or in e4m3 (`OUTPUT_E4M3`, JAX's
  `jax._src.cudnn.fused_attention_stablehlo.dot_product_attention(use_fp8=True)`, whose output has q's dtype).
  One e4m3 rounding of the output is most of that variant's error: 2.6e-2 of its 2.8e-2 relative L2 against
  float32 attention on the structured benchmark inputs (emulated on the CPU: quantizing only q and k gives 7.1e-3,
  only v 5.4e-3, only the probabilities 4.3e-3).

Only the forward exists (inference): training refuses this mode. Both cuDNN calls are JAX internals (the module
`jax._src.cudnn.fused_attention_stablehlo`), which is why they stay in this one file.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from longcat_jax.errors import ConfigError
from longcat_jax.quantization.formats import FP8_E4M3, to_format
from longcat_jax.quantization.matmul import quantize_activations
from longcat_jax.quantization.modes import PER_TENSOR

OUTPUT_BF16 = "bfloat16"
OUTPUT_E4M3 = "e4m3"
OUTPUTS = (OUTPUT_BF16, OUTPUT_E4M3)
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


def fp8_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, output: str = OUTPUT_BF16) -> jax.Array:
    """Softmax attention q [B, Sq, H, D] over k, v [B, Sk, H, D] -> [B, Sq, H, D] in q's dtype, in FP8 (module doc).

    On a GPU: cuDNN (compute capability 9.0+; `longcat_jax.quantization.check_quantize_supported` refuses others
    before anything is loaded). Elsewhere: `emulated_fp8_attention`, the same roundings in float32."""
    check_fp8_attention_shapes(q.shape, k.shape, v.shape)
    if output not in OUTPUTS:
        raise ConfigError(f"unknown FP8 attention output {output!r}; use one of {OUTPUTS}")
    if jax.default_backend() != "gpu":
        return emulated_fp8_attention(q, k, v, output=output)
    (q8, q_scale), (k8, k_scale), (v8, v_scale) = (quantize_activations(x, PER_TENSOR) for x in (q, k, v))
    softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    if output == OUTPUT_BF16:
        out = _cudnn_fp8_attention_bf16_out(q8, k8, v8, q_scale, k_scale, v_scale, softmax_scale)
        return out.astype(q.dtype)
    out_scale = 1.0 / (v_scale * OUTPUT_HEADROOM)  # the real output times this fills e4m3's range
    out = _cudnn_fp8_attention_e4m3_out(q8, k8, v8, q_scale, k_scale, v_scale, out_scale, softmax_scale)
    return (out.astype(jnp.float32) / out_scale).astype(q.dtype)


def emulated_fp8_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, output: str = OUTPUT_BF16) -> jax.Array:
    """`fp8_attention`'s arithmetic in float32 with its e4m3 roundings (the [B, H, Sq, Sk] scores are materialised:
    for the CPU and small models, and as the GPU tests' reference for cuDNN's call)."""
    check_fp8_attention_shapes(q.shape, k.shape, v.shape)
    dequantized = [x8.astype(jnp.float32) * s for x8, s in (quantize_activations(x, PER_TENSOR) for x in (q, k, v))]
    qf, kf, vf = dequantized
    scores = jnp.einsum("bqhd,bkhd->bhqk", qf, kf, precision="highest") / math.sqrt(q.shape[-1])  # [B, H, Sq, Sk]
    probabilities = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    row_sums = jnp.sum(probabilities, axis=-1)  # [B, H, Sq], float32, before the probabilities' rounding
    probabilities = to_format(probabilities * PROBABILITY_SCALE, FP8_E4M3).astype(jnp.float32) / PROBABILITY_SCALE
    out = jnp.einsum("bhqk,bkhd->bqhd", probabilities, vf, precision="highest")
    out = out / jnp.transpose(row_sums, (0, 2, 1))[..., None]
    if output == OUTPUT_E4M3:
        out_scale = FP8_E4M3.max_value / (jnp.max(jnp.abs(v.astype(jnp.float32))) * OUTPUT_HEADROOM)
        out = to_format(out * out_scale, FP8_E4M3).astype(jnp.float32) / out_scale
    else:
        out = out.astype(jnp.bfloat16)
    return out.astype(q.dtype)


def _scalar_operand(x) -> jax.Array:
    return jnp.reshape(jnp.asarray(x, jnp.float32), (1, 1, 1, 1))


def _cudnn_fp8_attention_e4m3_out(q8, k8, v8, q_scale, k_scale, v_scale, out_scale, softmax_scale):
    """JAX's cuDNN FP8 attention (output e4m3, stored times `out_scale`): [B, Sq, H, D] e4m3."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    one = _scalar_operand(1.0)
    params = {name: one for name in cudnn.fp8_params_keys}  # the backward's scales: unused by the forward
    params.update(descale_q=_scalar_operand(q_scale), descale_k=_scalar_operand(k_scale),
                  descale_v=_scalar_operand(v_scale), scale_s=_scalar_operand(PROBABILITY_SCALE),
                  descale_s=_scalar_operand(1.0 / PROBABILITY_SCALE), scale_o=_scalar_operand(out_scale))
    out, _, _ = cudnn.dot_product_attention(q8, k8, v8, fp8_params=params, scale=softmax_scale, qkv_layout="BTNH",
                                            use_fp8=True)
    return out


def _cudnn_fp8_attention_bf16_out(q8, k8, v8, q_scale, k_scale, v_scale, softmax_scale):
    """cuDNN's FP8 attention with a bf16 output ([B, Sq, H, D]): the same custom call as JAX's, its output declared
    bf16 (XLA builds cuDNN's graph from the call's declared types)."""
    out, _, _ = _fp8_attention_bf16_out_primitive().bind(
        q8, k8, v8, _scalar_operand(q_scale), _scalar_operand(k_scale), _scalar_operand(v_scale),
        _scalar_operand(1.0 / PROBABILITY_SCALE), _scalar_operand(PROBABILITY_SCALE), _scalar_operand(1.0),
        scale=softmax_scale)
    return out


@functools.cache
def _fp8_attention_bf16_out_primitive():
    """The primitive of `_cudnn_fp8_attention_bf16_out`, made on first use (it reads JAX internals)."""
    from jax._src import core, dispatch
    from jax._src.cudnn import fused_attention_stablehlo as cudnn
    from jax._src.interpreters import mlir
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import hlo

    primitive = core.Primitive("longcat_fp8_attention_bf16_out")
    primitive.multiple_results = True
    primitive.def_impl(functools.partial(dispatch.apply_primitive, primitive))

    def abstract(query, key, value, *scales, scale):
        amax = core.ShapedArray((1, 1, 1, 1), jnp.float32)
        return cudnn._attention_out_aval(query, query.shape, jnp.bfloat16), amax, amax

    def lowering(ctx, query, key, value, *scales, scale):
        b, t, n, h = ir.RankedTensorType(query.type).shape
        s = ir.RankedTensorType(key.type).shape[1]
        layout = cudnn.AttentionLayout.BTNH.value
        config = cudnn.create_dot_product_attention_fp8_backend_config(
            b, n, t, s, ir.BF16Type.get(), scale, cudnn.MaskType.NO_MASK, layout, is_bwd=False)
        amax = ir.RankedTensorType.get((1, 1, 1, 1), ir.F32Type.get())
        workspace = ir.RankedTensorType.get((0,), ir.IntegerType.get_unsigned(8))
        result_types = [ir.RankedTensorType.get((b, n, t, h), ir.BF16Type.get()), amax, amax, workspace]
        operands = [query, key, value, *scales]
        operand_shapes = [ir.RankedTensorType(x.type).shape for x in operands]
        out = mlir.custom_call(
            cudnn.get_fp8_custom_call_name(is_bwd=False), result_types=result_types, operands=operands,
            backend_config=config, operand_layouts=cudnn.default_layouts(*operand_shapes),
            result_layouts=[(3, 1, 2, 0)] + cudnn.default_layouts((1, 1, 1, 1), (1, 1, 1, 1), (0,)))
        return [hlo.transpose(out.results[0], mlir.dense_int_array((0, 2, 1, 3))), out.results[1], out.results[2]]

    primitive.def_abstract_eval(abstract)
    mlir.register_lowering(primitive, lowering, platform="cuda")
    return primitive
