"""Time our two BSA forward kernels side by side on one GPU: Triton-lowered and Mosaic GPU (Hopper) variants.

Kernel alone, on chunk-ordered random bf16 q, k, v [1, S, 32, 128] with the top-k selection of the
given sparsities; effective TFLOP/s count the selected blocks only (4*D*64*64 per pair). Every Mosaic
variant is checked against the Triton output (relative L2) before it is timed.

    python3 benchmarks/bsa_forward_kernels.py [--sizes 24x44x80,48x44x80] [--sparsities 0.875,0.9375,0.96875]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels import BSAParams, MosaicConfig, TritonConfig, select_blocks  # noqa: E402
from kernels import pallas_mosaic, pallas_triton  # noqa: E402

from bsa_attention import rel_l2, time_jax  # noqa: E402  (this script's sibling)

VARIANTS = {
    "mosaic k2v2p1": MosaicConfig(k_stages=2, v_stages=2, producers=1),
    "mosaic k3v2p1": MosaicConfig(k_stages=3, v_stages=2, producers=1),
    "mosaic k2v2p2": MosaicConfig(k_stages=2, v_stages=2, producers=2),
    "mosaic k3v2p2": MosaicConfig(k_stages=3, v_stages=2, producers=2),
    "mosaic k2v3p2": MosaicConfig(k_stages=2, v_stages=3, producers=2),
    "mosaic k3v2p2 no schedule barrier": MosaicConfig(k_stages=3, v_stages=2, producers=2, schedule_barrier=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="24x44x80,48x44x80", help="latent grids TxHxW, comma-separated")
    parser.add_argument("--sparsities", default="0.875,0.9375,0.96875")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the Mosaic ones")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print("| grid | sparsity | kernel | ms | effective TFLOP/s | rel. L2 vs Triton |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        latent = tuple(int(n) for n in size.split("x"))
        shape = (1, math.prod(latent), 32, 128)
        q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in jax.random.split(jax.random.key(0), 3))
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            params = BSAParams(sparsity=sparsity)
            indices, counts = jax.jit(lambda a, b, p=params: select_blocks(a, b, p))(q, k)
            flops = 4 * shape[-1] * 64 * 64 * int(jnp.sum(counts))
            triton = jax.jit(lambda *a: pallas_triton.sparse_attention_forward(*a, 64, 64, TritonConfig())[0])
            expected = triton(q, k, v, indices, counts)
            ms = time_jax(triton, q, k, v, indices, counts)
            print(f"| {size} | {sparsity} | triton | {ms:.2f} | {flops / ms / 1e9:.0f} | |", flush=True)
            for name in args.variants.split(","):
                kernel = jax.jit(lambda *a, c=VARIANTS[name]: pallas_mosaic.sparse_attention_forward(*a, c)[0])
                error = rel_l2(kernel(q, k, v, indices, counts), expected)
                ms = time_jax(kernel, q, k, v, indices, counts)
                print(f"| {size} | {sparsity} | {name} | {ms:.2f} | {flops / ms / 1e9:.0f} | {error:.1e} |", flush=True)


if __name__ == "__main__":
    main()
