"""The quantized matmuls: FP8 GEMM with dynamic activation scales, weight-only; what XLA is given and compiles to."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longcat_jax.errors import ConfigError
from longcat_jax.metrics import rel_l2
from longcat_jax.quantization import CUBLAS_FP8_GEMM, FP8_E4M3, INT8, SCHEMES, linear_hlo, linear_stablehlo, quantize_kernel
from longcat_jax.quantization.formats import dequantize_kernel
from longcat_jax.quantization.matmul import fp8_dot, quantize_activations, quantized_dot, weight_only_dot

# One GEMM on Gaussian bf16 operands (tests/quantization/quality_report.py, section 1, CPU): FP8 per-channel
# weights and per-token activations 3.73e-2, INT8 weight-only 7.85e-3, FP8 weight-only 2.64e-2. Margin 1.3x.
FP8_GEMM_TOL = 3.73e-2 * 1.3
INT8_WEIGHT_ONLY_TOL = 7.85e-3 * 1.3


def _operands(m=256, k=128, n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((k, n)) / np.sqrt(k), jnp.bfloat16)
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    return x, w, exact


def test_fp8_dot_is_the_product_of_the_quantized_operands():
    x, w, exact = _operands()
    qkernel, qscale = quantize_kernel(w, FP8_E4M3)
    got = fp8_dot(x, qkernel, qscale)
    assert got.dtype == jnp.float32 and got.shape == exact.shape
    xq, x_scale = quantize_activations(x)
    assert xq.dtype == jnp.float8_e4m3fn and x_scale.shape == (256, 1)
    dequantized = (np.asarray(xq, np.float64) * np.asarray(x_scale)) @ np.asarray(dequantize_kernel(qkernel, qscale), np.float64)
    # scales applied exactly once, after the GEMM (a scale applied twice or not at all is off by O(1)); a Hopper FP8
    # GEMM accumulates with fewer bits than float32: 4.4e-5 on an H200, 2026-12-04
    assert rel_l2(got, dequantized) < (1e-6 if jax.default_backend() == "cpu" else 1e-4)
    assert rel_l2(got, exact) < FP8_GEMM_TOL
    # A bf16 GEMM output (cheaper to write) changes little next to the e4m3 rounding.
    assert rel_l2(fp8_dot(x, qkernel, qscale, gemm_dtype=jnp.bfloat16), got) < 5e-3


def test_the_schemes_gemm_dtype_decides_what_the_fp8_gemm_writes():
    x, w, _ = _operands()
    qkernel, qscale = quantize_kernel(w, FP8_E4M3)
    bf16_gemm = SCHEMES["fp8"]  # the default
    f32_gemm = dataclasses.replace(SCHEMES["fp8"], gemm_dtype="float32")
    got = quantized_dot(x, qkernel, qscale, bf16_gemm)
    np.testing.assert_array_equal(got, fp8_dot(x, qkernel, qscale, gemm_dtype=jnp.bfloat16))
    np.testing.assert_array_equal(quantized_dot(x, qkernel, qscale, f32_gemm), fp8_dot(x, qkernel, qscale))
    assert not np.array_equal(got, quantized_dot(x, qkernel, qscale, f32_gemm))
    dots = [line for line in linear_stablehlo(64, 128, 96, bf16_gemm).splitlines() if "dot_general" in line]
    assert len(dots) == 1 and dots[0].endswith("-> tensor<64x96xbf16>")  # e4m3 operands, a bf16 result
    with pytest.raises(ConfigError, match="FP8 GEMM output dtype 'float16'"):
        dataclasses.replace(SCHEMES["fp8"], gemm_dtype="float16")


def test_per_token_scales_keep_small_tokens_that_a_per_tensor_scale_flushes():
    x, w, exact = _operands()
    magnitudes = jnp.asarray(np.logspace(-6, 0, x.shape[0])[:, None], jnp.float32)  # tokens from 1e-6 to 1
    x = (x.astype(jnp.float32) * magnitudes).astype(jnp.bfloat16)
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    qkernel, qscale = quantize_kernel(w, FP8_E4M3)

    def worst_token(scaling):
        got = np.asarray(fp8_dot(x, qkernel, qscale, scaling=scaling), np.float64)
        return max(rel_l2(got[i], exact[i]) for i in range(x.shape[0]))

    assert worst_token("per_token") < 2 * FP8_GEMM_TOL
    assert worst_token("per_tensor") > 0.9  # the smallest tokens underflow to zero
    with pytest.raises(ValueError, match="activation scaling"):
        quantize_activations(x, "per_channel")


@pytest.mark.parametrize("fmt,tol", [(INT8, INT8_WEIGHT_ONLY_TOL), (FP8_E4M3, FP8_GEMM_TOL)], ids=["int8", "fp8"])
def test_weight_only_dot_is_the_dequantized_matmul(fmt, tol):
    x, w, exact = _operands()
    qkernel, qscale = quantize_kernel(w, fmt)
    got = weight_only_dot(x, qkernel, qscale)
    assert got.dtype == jnp.float32
    dequantized = np.asarray(x, np.float64) @ np.asarray(dequantize_kernel(qkernel, qscale), np.float64)
    assert rel_l2(got, dequantized) < 1e-6
    assert rel_l2(got, exact) < tol


def _dot_operand_types(stablehlo: str) -> list[str]:
    return re.findall(r"stablehlo\.dot_general .*: \((tensor<[^>]+>), (tensor<[^>]+>)\)", stablehlo)


def test_fp8_linear_hands_xla_a_dot_on_two_e4m3_operands():
    text = linear_stablehlo(64, 128, 96, SCHEMES["fp8"])
    assert _dot_operand_types(text) == [("tensor<64x128xf8E4M3FN>", "tensor<96x128xf8E4M3FN>")]
    assert "%arg1: tensor<96x128xf8E4M3FN>" in text  # the stored weight goes into the dot as it is
    assert "stablehlo.convert %arg1 : (tensor<96x128xf8E4M3FN>)" not in text


@pytest.mark.parametrize("mode,stored", [("int8", "i8"), ("fp8-weight-only", "f8E4M3FN")])
def test_weight_only_linear_converts_the_weight_inside_the_matmul(mode, stored):
    text = linear_stablehlo(64, 128, 96, SCHEMES[mode])
    assert _dot_operand_types(text) == [("tensor<64x128xbf16>", "tensor<96x128xbf16>")]
    assert re.search(rf"stablehlo\.convert %arg1 : \(tensor<96x128x{stored}>\) -> tensor<96x128xbf16>", text)


@pytest.mark.gpu
def test_fp8_linear_compiles_to_the_cublaslt_fp8_gemm_on_fp8_gpus():
    device = jax.devices()[0]
    capability = tuple(int(p) for p in str(getattr(device, "compute_capability", "0.0")).split(".")[:2])
    if capability < (8, 9):
        pytest.skip(f"{device.device_kind} (compute capability {capability}) has no FP8 tensor cores")
    hlo = linear_hlo(4096, 4096, 12288, SCHEMES["fp8"])
    assert CUBLAS_FP8_GEMM in hlo
    # Weight-only INT8 stays a 16-bit GEMM with the conversion fused, never an FP8 one.
    assert CUBLAS_FP8_GEMM not in linear_hlo(4096, 4096, 12288, SCHEMES["int8"])
