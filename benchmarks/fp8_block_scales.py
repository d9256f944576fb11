"""The FP8 BSA forward's error through its float32 emulation (the reference backend), on a CPU in a minute.

Why: the FP8 operands' scales changed form (one per head, then one per 64-token block and head); the kernel matches its
emulation within 1.1e-2 in the interpreter (tests/kernels/test_bsa_fp8.py), so the emulation's error against float32
attention on the same selection says what a scaling form costs, on random and on structured (video-like) inputs,
without a GPU. Run it on two checkouts to compare two forms:

    python3 benchmarks/fp8_block_scales.py [--grid 8x16x32 --heads 8]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bsa_inputs import StructuredInputSpec, parse_grid, structured_qkv  # noqa: E402  # this script's sibling

from kernels import BSAParams, KernelConfig, bsa_attention  # noqa: E402
from longcat_jax.metrics import rel_l2  # noqa: E402


def inputs(kind: str, grid, heads: int, head_dim: int):
    """q, k, v [1, T*H*W, heads, head_dim] bf16: random normal, or the DiT-like structured ones."""
    if kind == "random":
        shape = (1, math.prod(grid), heads, head_dim)
        return tuple(jax.random.normal(key, shape, jnp.bfloat16) for key in jax.random.split(jax.random.key(0), 3))
    return structured_qkv(jax.random.key(0), grid, StructuredInputSpec(hidden_size=heads * head_dim, num_heads=heads))


def emulation_arguments(description: str) -> argparse.ArgumentParser:
    """The command line the FP8 emulation scripts share: grid, heads, head_dim, top-k sparsities."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--grid", default="8x16x32", help="latent grid TxHxW")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--sparsities", default="0.875,0.9375")
    return parser


def main() -> None:
    args = emulation_arguments(__doc__.splitlines()[0]).parse_args()
    grid = parse_grid(args.grid)
    print("| inputs | sparsity | FP8 vs float32 | bf16 vs float32 | FP8 vs bf16 |")
    print("|---|---|---|---|---|")
    for kind in ("random", "structured"):
        q, k, v = inputs(kind, grid, args.heads, args.head_dim)
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            params = BSAParams(sparsity=sparsity)
            bf16 = bsa_attention(q, k, v, grid, grid, params, backend="reference")
            fp8 = bsa_attention(q, k, v, grid, grid, params, backend="reference", kernel_config=KernelConfig(fp8=True))
            f32 = bsa_attention(*(x.astype(jnp.float32) for x in (q, k, v)), grid, grid, params, backend="reference")
            print(f"| {kind} | {sparsity} | {rel_l2(fp8, f32):.3e} | {rel_l2(bf16, f32):.3e} | {rel_l2(fp8, bf16):.3e} |",
                  flush=True)


if __name__ == "__main__":
    main()
