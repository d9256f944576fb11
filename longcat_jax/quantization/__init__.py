"""Quantized DiT weights: FP8 e4m3 (with FP8 GEMMs on Ada/Hopper) and INT8 weight-only, per-output-channel scales.

    formats   WeightFormat (FP8_E4M3, INT8), quantize_kernel / dequantize_kernel (numpy or jax)
    modes     the `--quantize` modes ('none', 'fp8', 'fp8-attention', 'fp8-weight-only', 'int8') as QuantSchemes
    policy    which DiT Linears are quantized, which stay in high precision and why
    tensors   quantize_tensors: the loaders' (path, array) stream quantized (or checked) tensor by tensor
    matmul    the FP8 GEMM and the weight-only matmul; the compiled HLO of one quantized Linear
    attention FP8 dense attention ('fp8-attention'): cuDNN's on Hopper+, its float32 emulation elsewhere
    swiglu    the FP8 SwiGLU FFN whose hidden activation is quantized for w2 without a bf16 copy
    swiglu_kernel     its amax and quantization in one pass: a Pallas Triton row kernel (NVIDIA GPUs)
    modulated_kernel  LayerNorm, modulation and per-token quantization of a GEMM input: a Pallas Triton row kernel
    compile_options  quantized_jit: jax.jit that compiles FP8 programs on GPUs with the options they need
    device    check_quantize_supported: FP8 compute needs compute capability 8.9+, FP8 attention 9.0+

The quantized Linear module itself is `longcat_jax.models.dit.quantized_linear.QuantizedLinear`. This package
imports no model, so models, loaders and the converter can all use it.
"""

from longcat_jax.quantization.compile_options import compiler_options_for, quantized_jit
from longcat_jax.quantization.device import check_quantize_supported, fp8_compute_supported
from longcat_jax.quantization.formats import FP8_E4M3, INT8, WeightFormat, dequantize_kernel, quantize_kernel
from longcat_jax.quantization.matmul import CUBLAS_FP8_GEMM, fp8_dot, linear_hlo, linear_stablehlo, weight_only_dot
from longcat_jax.quantization.modes import MODES, SCHEMES, QuantScheme, scheme_for
from longcat_jax.quantization.policy import HIGH_PRECISION, QUANTIZED_BLOCK_LINEARS, is_quantized_kernel, is_quantized_module
from longcat_jax.quantization.tensors import quantize_tensors, stored_quantization

__all__ = [
    "CUBLAS_FP8_GEMM",
    "FP8_E4M3",
    "HIGH_PRECISION",
    "INT8",
    "MODES",
    "QUANTIZED_BLOCK_LINEARS",
    "SCHEMES",
    "QuantScheme",
    "WeightFormat",
    "check_quantize_supported",
    "compiler_options_for",
    "dequantize_kernel",
    "fp8_compute_supported",
    "fp8_dot",
    "is_quantized_kernel",
    "is_quantized_module",
    "linear_hlo",
    "linear_stablehlo",
    "quantize_kernel",
    "quantize_tensors",
    "quantized_jit",
    "scheme_for",
    "stored_quantization",
    "weight_only_dot",
]
