"""How small one 8-bit weight GEMM's error can get on Gaussian weights with isotropic inputs.

The INT8 weight-only DiT moved the real-size step output 2.5-2.8e-2 from bf16 on random weights (kernels
N(0, 1/fan_in)), with 8.7e-3 relative error per GEMM (BENCHMARKS.md, "Quantized DiT step"). Every block adds about
the same error, so the output error scales with the per-GEMM error; 1e-2 at the output needs about 3.4e-3 per GEMM.
This script measures, on one GEMM of the DiT's width (x [2048, 4096] N(0, 1) @ w [4096, 4096] N(0, 1/4096), float32,
numpy on the CPU), the relative L2 error of the output for:

- INT8 round-to-nearest with one absmax scale per output channel (what `--quantize int8` does), per 128 and per 32
  inputs;
- the MSE-optimal 256-level scalar code for a Gaussian (Lloyd-Max, levels fitted to 20M N(0, 1) draws, one scale
  per output channel): no 8-bit scalar code of one weight at a time does better on these weights;
- the rate-distortion bound of a Gaussian source at 8 bits a weight, 2^-8: no 8-bit code of any kind (vector codes,
  error-compensating rounding such as GPTQ) can have a lower weight error, and with isotropic inputs (uncorrelated
  channels of equal variance), as here, the output's relative error equals the weight's. The DiT's inputs are far
  from isotropic (`gemm_input_isotropy.py`), which lowers the floor for codes that use them (error-compensating
  rounding) but not for codes that round each weight alone.

    python3 benchmarks/int8_error_bound.py
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from longcat_jax.quantization.formats import INT8, dequantize_kernel, quantize_kernel

K = N = 4096  # the DiT's hidden size: qkv, projection and FFN inputs
LEVELS = 256


def as_stored(w: np.ndarray) -> np.ndarray:
    """w [N, K] as `--quantize int8` stores and reads it (`formats.quantize_kernel`: one scale per output channel)."""
    return dequantize_kernel(*quantize_kernel(w.T, INT8)).T


def rounded_int8(w: np.ndarray, group: int) -> np.ndarray:
    """w [N, K] rounded to INT8 with one absmax scale per `group` consecutive inputs of each output channel."""
    grouped = w.reshape(N, K // group, group)
    scale = np.abs(grouped).max(-1, keepdims=True) / 127
    return (np.clip(np.round(grouped / scale), -127, 127) * scale).reshape(N, K)


def lloyd_max_levels(rng: np.random.Generator, iterations: int = 20) -> np.ndarray:
    """[256] levels of the MSE-optimal scalar quantizer of N(0, 1), from the high-rate optimum's level density
    (proportional to p^(1/3): N(0, 3) quantiles) refined by Lloyd iterations on 20M draws."""
    z = rng.standard_normal(20_000_000)
    levels = np.sqrt(3) * np.array([NormalDist().inv_cdf((i + 0.5) / LEVELS) for i in range(LEVELS)])
    for _ in range(iterations):
        cell = np.searchsorted((levels[1:] + levels[:-1]) / 2, z)
        counts = np.bincount(cell, minlength=LEVELS)
        sums = np.bincount(cell, weights=z, minlength=LEVELS)
        levels = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), levels))
    return levels


def rounded_lloyd_max(w: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """w [N, K] rounded to the nearest of `levels` times each output channel's standard deviation."""
    std = w.std(axis=1, keepdims=True)
    return levels[np.searchsorted((levels[1:] + levels[:-1]) / 2, w / std)] * std


def main() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, K)).astype(np.float32) / np.sqrt(K)  # [out, in]
    x = rng.standard_normal((2048, K)).astype(np.float32)  # [tokens, in]
    want = x @ w.T

    def output_error(rounded: np.ndarray) -> float:
        return float(np.linalg.norm(x @ rounded.T - want) / np.linalg.norm(want))

    print("| 8-bit weight code | output rel L2 |")
    print("| --- | --- |")
    print(f"| INT8, one scale per output channel (--quantize int8) | {output_error(as_stored(w)):.3e} |")
    for group in (128, 32):
        print(f"| INT8, one scale per {group} inputs | {output_error(rounded_int8(w, group)):.3e} |")
    print(f"| Lloyd-Max, 256 levels, one scale per output channel | "
          f"{output_error(rounded_lloyd_max(w, lloyd_max_levels(rng))):.3e} |")
    print(f"| rate-distortion bound at 8 bits a weight (Gaussian source) | {2.0 ** -8:.3e} |")


if __name__ == "__main__":
    main()
