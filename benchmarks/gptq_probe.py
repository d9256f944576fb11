"""What error-compensating rounding (GPTQ) would do for `--quantize int8` on the DiT's Linears: a probe, not the feature.

`gemm_input_isotropy.py` found the inputs of the DiT's GEMMs far from isotropic, which leaves room under round-to-
nearest for rounding that uses them. This script runs a random real-config DiT (float32) twice eagerly on different
random inputs, keeping each Linear's input second moment M = x^T x / N (calibration and held-out), and for the chosen
Linears compares, against the float32 kernel W [in, out]:

- round-to-nearest INT8 with one absmax scale per output channel (what `--quantize int8` stores), and
- GPTQ (Frantar et al., 2022) into the same INT8 grid with the same scales, as `convert --calibration` rounds
  (`longcat_jax.quantization.gptq`, float32): the input rows quantized in order, each row's rounding error spread
  over the rows not yet quantized through the Cholesky factor of the damped inverse of the calibration M (blocks of
  128 rows, 1% damping). BENCHMARKS.md's table came from this script's own float64 numpy version of it (eccafaf);

by the output's relative L2 error sqrt(tr(E^T M E) / tr(W^T M W)), E the kernel's error, on the calibration and on
the held-out inputs. The quantized weights keep the INT8 format, so a GPTQ checkpoint would load and run as today.

    python3 benchmarks/gptq_probe.py [--grid 4x32x32] [--batch 2] [--depth 2] [--layers blocks/1/ffn/w1,...]
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np
from bsa_inputs import grid_argument  # this script's siblings
from dit_step import real_config
from flax import nnx
from gemm_input_isotropy import input_moments

from longcat_jax.models.dit import layers
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.quantization.formats import INT8, dequantize_kernel, quantize_kernel
from longcat_jax.quantization.gptq import gptq_quantize_kernel

LAYERS = "blocks/1/attn/qkv,blocks/1/attn/proj,blocks/1/cross_attn/q,blocks/1/ffn/w1"


def round_to_nearest(w: np.ndarray) -> np.ndarray:
    """w [in, out] as `--quantize int8` stores and reads it (`formats.quantize_kernel`), dequantized [in, out]."""
    return dequantize_kernel(*quantize_kernel(w.astype(np.float32), INT8), np.float64)


def output_error(error: np.ndarray, w: np.ndarray, moment: np.ndarray) -> float:
    """sqrt(tr(E^T M E) / tr(W^T M W)): the output's relative L2 error over the inputs whose second moment is M."""
    return float(np.sqrt(np.sum(error * (moment @ error)) / np.sum(w * (moment @ w))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=grid_argument, default="4x32x32", help="token grid TxHxW (after the 1x2x2 patches)")
    parser.add_argument("--batch", type=int, choices=(1, 2), default=2)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--layers", default=LAYERS, help="comma-separated Linear paths")
    parser.add_argument("--small", action="store_true", help="a 256-wide DiT (a check on any machine)")
    args = parser.parse_args()
    grid = args.grid
    config = DiTConfig.from_dict(real_config(args.depth, bsa=None, small=args.small))
    model = random_dit(config, dtype=jnp.float32, draw_on_device=True)
    calibration = input_moments(model, grid, args.batch, seed=2)
    held_out = input_moments(model, grid, args.batch, seed=3)
    kernels = {calibration.names[id(node)]: np.asarray(node.kernel.get_value(), np.float64)
               for _, node in nnx.iter_graph(model) if isinstance(node, layers.Linear)}
    print(f"grid {grid} x batch {args.batch}, width {config.hidden_size}, depth {config.depth}")
    print("| Linear | tokens | RTN calibration / held-out | GPTQ calibration / held-out | held-out RTN / GPTQ | s |")
    print("|---|---|---|---|---|---|")
    for name in args.layers.split(","):
        if name not in kernels or name not in calibration.sums:
            parser.error(f"no block Linear {name!r} with recorded inputs; these have: {', '.join(sorted(kernels))}")
        start = time.perf_counter()
        w = kernels[name]
        nearest = round_to_nearest(w)
        m_cal = calibration.sums[name] / calibration.tokens[name]
        m_out = held_out.sums[name] / held_out.tokens[name]
        compensated = dequantize_kernel(*(np.asarray(a) for a in gptq_quantize_kernel(w.astype(np.float32), m_cal, INT8)),
                                        np.float64) - w
        rtn = nearest - w
        errors = [output_error(e, w, m) for e in (rtn, compensated) for m in (m_cal, m_out)]
        print(f"| {name} | {calibration.tokens[name]} | {errors[0]:.3e} / {errors[1]:.3e} | "
              f"{errors[2]:.3e} / {errors[3]:.3e} | {errors[1] / errors[3]:.2f}x | {time.perf_counter() - start:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
