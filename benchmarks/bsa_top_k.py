"""Time the BSA top-k selection kernel (`kernels.pallas_topk`) alone, next to XLA's `jax.lax.top_k` + sort.

Why: at 168,960 tokens the top-k over 2,640 key blocks a row is the largest part of the FP8 whole call outside the
attention kernel (#19). Random normal block scores [1, heads, M, M] (M query and key blocks: 1,320 at 84,480 tokens,
2,640 at 168,960), k from the top-k sparsity as `BSAParams.num_topk` takes it. The kernel's indices are checked
against XLA's before timing. To compare two versions of the kernel, run the script once with each tree first on
PYTHONPATH.

    python3 benchmarks/bsa_top_k.py [--blocks 1320,2640] [--sparsities 0.875,0.9375,0.96875] [--heads 32]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bsa_attention import Timer  # noqa: E402  (this script's sibling)

import kernels  # noqa: E402
from kernels import BSAParams, pallas_topk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", default="1320,2640", help="key (and query) blocks a row, comma-separated")
    parser.add_argument("--sparsities", default="0.875,0.9375,0.96875")
    parser.add_argument("--heads", type=int, default=32)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, kernels from {kernels.__file__}")
    pieces = getattr(pallas_topk, "row_pieces", None)
    print("| blocks | sparsity | k | row lanes | kernel ms | XLA top_k + sort ms | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for blocks in (int(n) for n in args.blocks.split(",")):
        scores = jax.random.normal(jax.random.key(blocks), (1, args.heads, blocks, blocks), jnp.float32)
        lanes = "+".join(map(str, pieces(blocks))) if pieces else str(pl_next_power_of_2(blocks))
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            k = BSAParams(sparsity=sparsity).num_topk(blocks)
            kernel = jax.jit(lambda s, k=k: pallas_topk.top_k_indices(s, k))
            xla = jax.jit(lambda s, k=k: jnp.sort(jax.lax.top_k(s, k)[1].astype(jnp.int32), axis=-1))
            np.testing.assert_array_equal(kernel(scores), xla(scores))
            kernel_ms, xla_ms = Timer()(kernel, scores), Timer()(xla, scores)
            print(f"| {blocks} | {sparsity} | {k} | {lanes} | {kernel_ms:.3f} | {xla_ms:.3f} | {xla_ms / kernel_ms:.2f}x |",
                  flush=True)


def pl_next_power_of_2(n: int) -> int:
    """The one padded row an older kernel (without `row_pieces`) holds."""
    return 1 << (n - 1).bit_length()


if __name__ == "__main__":
    main()
