"""How far from isotropic the inputs of the DiT's GEMMs are: the floor of any 8-bit weight code, layer by layer.

`benchmarks/int8_error_bound.py` puts one Gaussian GEMM's floor at 8 bits a weight at 2^-8 = 3.9e-3 relative error
for isotropic inputs. With inputs of second-moment matrix M, an ideal code (reverse water-filling over M's
eigenvectors, which error-compensating rounding such as GPTQ approaches) can go lower, to 2^-8 sqrt(GM / AM), GM and
AM the geometric and arithmetic means of M's eigenvalues. This script runs a random real-config DiT (kernels
N(0, 1/fan_in), float32) on random inputs, sums x^T x in float64 over every token that enters each block's large
Linears, and prints sqrt(GM / AM) and the floor it implies. Linears whose input has fewer tokens than twice its
width (the text's kv, w2's 11,008 wide input at these sizes) are left out: their estimate would be rank-deficient.
The sums are float64 numpy on the host (3 blocks at the real width and 8,192 tokens: 7 minutes on 2 CPU cores).

The sample matrix's log-determinant is biased low; for Gaussian tokens its expectation is that of M plus
sum_i psi((N - i + 1) / 2) + d ln(2 / N) (Wishart), and both the raw and the corrected ratio are printed. Tokens of
one video are not independent, so the corrected figure is an estimate.

    python3 benchmarks/gemm_input_isotropy.py [--grid 4x32x32] [--batch 2] [--depth 2] [--small]
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
from bsa_inputs import grid_argument  # this script's siblings
from dit_step import random_inputs, real_config
from flax import nnx
from scipy.special import digamma

from longcat_jax.models.dit import layers
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import random_dit

EIGHT_BIT_FLOOR = 2.0**-8  # rate-distortion bound of a Gaussian source at 8 bits, isotropic inputs


class InputMoments:
    """Running float64 sums of x^T x [in, in] and token counts, per named Linear, while the model runs eagerly."""

    def __init__(self, model: nnx.Module):
        self.names = {id(node): "/".join(str(p) for p in path)
                      for path, node in nnx.iter_graph(model) if isinstance(node, layers.Linear)}
        self.sums: dict[str, np.ndarray] = {}
        self.tokens: dict[str, int] = {}

    def record(self, linear: layers.Linear, x: jax.Array) -> None:
        name = self.names.get(id(linear), "")
        if not name.startswith("blocks") or name.endswith("adaln"):
            return
        rows = np.asarray(x, np.float64).reshape(-1, x.shape[-1])  # [N, in]
        self.sums[name] = self.sums.get(name, 0.0) + rows.T @ rows
        self.tokens[name] = self.tokens.get(name, 0) + rows.shape[0]


def input_moments(model: nnx.Module, grid, batch: int, seed: int = 2) -> InputMoments:
    """Each block Linear's x^T x (float64) over one eager forward of `model` on `random_inputs(grid, batch, seed)`."""
    moments = InputMoments(model)
    plain_call = layers.Linear.__call__

    def recording_call(linear, x):
        moments.record(linear, x)
        return plain_call(linear, x)

    layers.Linear.__call__ = recording_call  # eager run: every Linear's input is a concrete array
    try:
        model(*random_inputs(grid, batch, seed))
    finally:
        layers.Linear.__call__ = plain_call
    return moments


def log_ratio(moment: np.ndarray, tokens: int, corrected: bool) -> float:
    """ln(GM / AM) of the eigenvalues of `moment` [d, d] (the second-moment matrix of `tokens` rows)."""
    d = moment.shape[0]
    sign, logdet = np.linalg.slogdet(moment)
    if sign <= 0:  # singular in float64: an input of lower rank than its width
        return -math.inf
    if corrected:
        logdet -= float(np.sum(digamma((tokens - np.arange(d)) / 2.0))) + d * math.log(2.0 / tokens)
    return logdet / d - math.log(np.trace(moment) / d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=grid_argument, default="4x32x32", help="token grid TxHxW (after the 1x2x2 patches)")
    parser.add_argument("--batch", type=int, choices=(1, 2), default=2)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="a 256-wide DiT (a check on any machine)")
    args = parser.parse_args()
    grid = args.grid
    config = DiTConfig.from_dict(real_config(args.depth, bsa=None, small=args.small))
    model = random_dit(config, dtype=jnp.float32, draw_on_device=True)
    moments = input_moments(model, grid, args.batch)
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; grid {grid} x batch {args.batch}, "
          f"width {config.hidden_size}, depth {config.depth}")
    print("| Linear | input width | tokens | sqrt(GM/AM) raw | sqrt(GM/AM) corrected | 8-bit floor (corrected) |")
    print("|---|---|---|---|---|---|")
    for name in sorted(moments.sums):
        moment, tokens = moments.sums[name] / moments.tokens[name], moments.tokens[name]
        width = moment.shape[0]
        if tokens < 2 * width:
            print(f"| {name} | {width} | {tokens} | too few tokens | | |")
            continue
        raw, corrected = (math.exp(log_ratio(moment, tokens, c) / 2) for c in (False, True))
        print(f"| {name} | {width} | {tokens} | {raw:.3f} | {corrected:.3f} | {EIGHT_BIT_FLOOR * corrected:.2e} |",
              flush=True)


if __name__ == "__main__":
    main()
