"""The FP8 SwiGLU FFN (`quantization.swiglu`): the three FP8 Linears' product with two bf16 roundings fewer, the FFN
module taking it only for plain FP8 Linears, straight-through gradients, and (GPU) no bf16 hidden activation."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit.block import FeedForwardSwiGLU
from longcat_jax.models.dit.layers import LoRAAdapter
from longcat_jax.models.dit.quantized_linear import QuantizedLinear
from longcat_jax.quantization.compile_options import FP8_GPU_COMPILER_OPTIONS
from longcat_jax.quantization.formats import FP8_E4M3, to_format
from longcat_jax.quantization.matmul import CUBLAS_FP8_GEMM, activation_scale, quantize_activations
from longcat_jax.quantization.modes import SCHEMES
from longcat_jax.quantization.swiglu import fp8_swiglu_ffn, quantized_hidden_xla
from longcat_jax.quantization.swiglu_kernel import swiglu_quantize
from tests.helpers.cuda_lowering import lowered_for_cuda

HIDDEN, FFN = 128, 352


def _ffns(hidden=HIDDEN, ffn=FFN, dtype=jnp.bfloat16):
    """(the FFN with FP8 Linears, the same FFN in float32) from one draw of float32 weights."""
    exact = FeedForwardSwiGLU(hidden, ffn, rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32)
    quantized = FeedForwardSwiGLU(hidden, ffn, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=jnp.float32)
    for name in ("w1", "w2", "w3"):
        setattr(quantized, name, QuantizedLinear.from_linear(getattr(quantized, name), SCHEMES["fp8"]))
    return quantized, exact


def _tokens(shape=(2, 96, HIDDEN), seed=1):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(jnp.bfloat16)


def _three_linears(ffn: FeedForwardSwiGLU, x):
    return ffn.w2(jax.nn.silu(ffn.w1(x)) * ffn.w3(x))


def _stepwise(ffn: FeedForwardSwiGLU, x) -> np.ndarray:
    """The fused FFN's arithmetic written out step by step in float64 on the quantized operands (no barrier), the
    GEMM outputs in bf16 as the scheme writes them."""
    xq, x_scale = quantize_activations(x)

    def linear_acc(q, linear):  # the FP8 GEMM, its output rounded to the scheme's bf16
        acc = np.asarray(q, np.float64) @ np.asarray(linear.qkernel.get_value(), np.float64).T
        return np.asarray(jnp.asarray(acc, jnp.float32).astype(jnp.bfloat16), np.float64)

    def channel_scale(linear):
        return np.asarray(linear.qscale.get_value(), np.float64)

    gate = linear_acc(xq, ffn.w1) * np.asarray(x_scale) * channel_scale(ffn.w1)
    up = linear_acc(xq, ffn.w3) * np.asarray(x_scale) * channel_scale(ffn.w3)
    hidden = jnp.asarray(gate / (1.0 + np.exp(-gate)) * up, jnp.float32)
    h_scale = activation_scale(hidden)
    hq = to_format(hidden / h_scale, FP8_E4M3)
    return linear_acc(hq, ffn.w2) * np.asarray(h_scale) * channel_scale(ffn.w2)


def test_the_fused_ffn_is_the_quantized_product_without_the_bf16_roundings():
    ffn, exact = _ffns()
    x = _tokens()
    fused = ffn(x)
    assert fused.dtype == jnp.bfloat16 and fused.shape == x.shape
    # the module took the fused path: the FFN function itself, bit for bit
    weights = [linear.quantized_weight for linear in (ffn.w1, ffn.w3, ffn.w2)]
    np.testing.assert_array_equal(fused, fp8_swiglu_ffn(x, *weights, jnp.bfloat16, jnp.bfloat16, True, None).astype(jnp.bfloat16))
    # ... which is the quantized arithmetic (float32 against float64 and the final bf16 rounding are what differ)
    assert rel_l2(fused, _stepwise(ffn, x)) < 5e-3
    # and as accurate as the three Linears: their extra bf16 roundings of gate, up and their product (about 2e-3 each)
    # add in quadrature to the e4m3 roundings' 6.3e-2 (1.65e-3 and 6.38e-2 against 6.35e-2 here, 2026-12-04, CPU)
    reference = exact(x.astype(jnp.float32))
    unfused = _three_linears(ffn, x)
    assert rel_l2(fused, unfused) > 1e-3  # the two paths really differ
    assert rel_l2(fused, reference) < 1.05 * rel_l2(unfused, reference)


def test_the_ffn_keeps_the_three_linears_when_one_has_a_lora_or_per_tensor_scales():
    ffn, _ = _ffns()
    x = _tokens()
    rng = np.random.default_rng(2)
    down = jnp.asarray(rng.standard_normal((FFN, 4)) * 0.05, jnp.float32)
    up = jnp.asarray(rng.standard_normal((4, HIDDEN)) * 0.05, jnp.float32)
    ffn.w2.loras.append(LoRAAdapter(down, up, 1.0, dtype=jnp.bfloat16, param_dtype=jnp.float32))
    assert not ffn.w2.plain_fp8
    np.testing.assert_array_equal(ffn(x), _three_linears(ffn, x))

    per_tensor, _ = _ffns()
    per_tensor.w1.scheme = dataclasses.replace(SCHEMES["fp8"], activation_scaling="per_tensor")
    assert not per_tensor.w1.plain_fp8
    np.testing.assert_array_equal(per_tensor(x), _three_linears(per_tensor, x))


def test_its_gradient_is_straight_through():
    """The input gradient treats each activation quantization as the identity: close to the float FFN's gradient
    with the dequantized weights, and to the three quantized Linears' (whose backward is straight-through too)."""
    ffn, _ = _ffns()
    x = _tokens(seed=3)
    cotangent = _tokens(seed=4)

    def vjp(fn, x):
        return jax.vjp(fn, x)[1](cotangent.astype(fn(x).dtype))[0].astype(jnp.float32)

    fused = vjp(ffn, x)
    assert fused.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(fused)))
    dequantized = FeedForwardSwiGLU(HIDDEN, FFN, rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32)
    for name in ("w1", "w2", "w3"):
        getattr(dequantized, name).kernel.set_value(getattr(ffn, name).dequantized_kernel())
    float_grad = vjp(dequantized, x.astype(jnp.float32))
    unfused_grad = vjp(lambda x: _three_linears(ffn, x), x)
    assert rel_l2(fused, float_grad) <= 1.1 * rel_l2(unfused_grad, float_grad)
    assert rel_l2(fused, unfused_grad) < 3e-2


def _fusion_outputs(hlo: str, rows: int, ffn: int) -> list[str]:
    """The compiled program's fusions whose result is a [rows, ffn] array that is not e4m3."""
    pattern = re.compile(rf"= (\w+)\[{rows},{ffn}\]\S* fusion\(")
    return [dtype for dtype in pattern.findall(hlo) if dtype != "f8e4m3fn"]


def _gemm_outputs(rows=40, width=352, seed=5):
    """Unscaled GEMM outputs and scales as the FFN hands them over, with a row of zeros and one of large values."""
    keys = jax.random.split(jax.random.key(seed), 5)
    gate_acc = jax.random.normal(keys[0], (rows, width)) * 40.0
    up_acc = jax.random.normal(keys[1], (rows, width)) * 40.0
    gate_acc, up_acc = (a.at[3].set(0.0).at[7].multiply(1e4).astype(jnp.bfloat16) for a in (gate_acc, up_acc))
    x_scale = jax.random.uniform(keys[2], (rows, 1), minval=1e-3, maxval=2e-2)
    w1_scale, w3_scale = (jax.random.uniform(k, (width,), minval=1e-3, maxval=3e-3) for k in keys[3:])
    return gate_acc, up_acc, x_scale, w1_scale, w3_scale


@pytest.mark.parametrize("width", [352, 256])  # padded to 512 with masked columns; a power of two as it is
def test_the_row_kernel_is_the_xla_form_in_the_interpreter(width):
    operands = _gemm_outputs(width=width)
    hq, h_scale = swiglu_quantize(*operands, interpret=True)
    want_hq, want_scale = quantized_hidden_xla(*operands)
    assert hq.dtype == jnp.float8_e4m3fn and hq.shape == want_hq.shape and h_scale.shape == want_scale.shape
    np.testing.assert_allclose(h_scale, want_scale, rtol=1e-6)
    np.testing.assert_array_equal(hq.astype(jnp.float32), want_hq.astype(jnp.float32))
    assert float(jnp.max(jnp.abs(hq[7].astype(jnp.float32)))) == FP8_E4M3.max_value  # the row's own scale
    assert not bool(jnp.any(hq[3].astype(jnp.float32)))  # a zero row stays zero (floored scale, no NaN)


def test_the_row_kernel_lowers_to_triton_for_cuda():
    operands = _gemm_outputs()
    text = lowered_for_cuda(swiglu_quantize, *operands)
    assert "swiglu_quantize" in text and "triton" in text.lower()


def _fp8_gpu():
    device = jax.devices()[0]
    capability = tuple(int(p) for p in str(getattr(device, "compute_capability", "0.0")).split(".")[:2])
    if capability < (8, 9):
        pytest.skip(f"{device.device_kind} (compute capability {capability}) has no FP8 tensor cores")


@pytest.mark.gpu
def test_on_fp8_gpus_the_row_kernel_is_the_xla_form():
    _fp8_gpu()
    operands = _gemm_outputs(rows=4096, width=2816)
    hq, h_scale = swiglu_quantize(*operands)
    want_hq, want_scale = jax.jit(quantized_hidden_xla)(*operands)
    np.testing.assert_allclose(h_scale, want_scale, rtol=1e-5)
    # the GPU's exp and division may differ from XLA's in the last bit, which can move a value across an e4m3 tie
    assert rel_l2(hq.astype(jnp.float32) * h_scale, want_hq.astype(jnp.float32) * want_scale) < 1e-3


@pytest.mark.gpu
def test_on_fp8_gpus_the_hidden_activation_is_only_written_in_e4m3():
    _fp8_gpu()
    # rows enough that XLA's dot merger (which joins dots sharing an operand when they are small: at 4,096 rows it
    # joined w1 and w3 into one GEMM and sliced its output in bf16, on an H200, 2026-12-04) leaves them apart, as at
    # the DiT's sizes
    rows, hidden, ffn_size = 16384, 1024, 2816
    ffn, _ = _ffns(hidden, ffn_size)
    weights = [linear.quantized_weight for linear in (ffn.w1, ffn.w3, ffn.w2)]
    x = jax.ShapeDtypeStruct((rows, hidden), jnp.bfloat16)

    def compiled(fn):
        return jax.jit(fn, compiler_options=FP8_GPU_COMPILER_OPTIONS).lower(x).compile().as_text()

    for row_kernel in (True, False):
        hlo = compiled(lambda x: fp8_swiglu_ffn(x, *weights, jnp.bfloat16, jnp.bfloat16, row_kernel, None))
        assert hlo.count(CUBLAS_FP8_GEMM) >= 3
        assert _fusion_outputs(hlo, rows, ffn_size) == []
        assert ("pallas_call" in hlo) == row_kernel  # the kernel's custom call (its instruction name on an H200)
