"""Time the BSA top-k selection kernel (`kernels.pallas_topk`) alone: each row as one padded array and as
power-of-two pieces (`split_rows`), next to XLA's `jax.lax.top_k` + sort, in the same run.

Why: at 168,960 tokens the top-k over 2,640 key blocks a row is the largest part of the FP8 whole call outside the
attention kernel (#19), and a row of 2,640 padded to 4,096 lanes spends a third of its compares on padding.
Random normal block scores [1, heads, M, M] (M query and key blocks: 1,320 at 84,480 tokens, 2,640 at 168,960),
k from the top-k sparsity as `BSAParams.num_topk` takes it. Both forms' indices are checked against XLA's first.

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

from kernels import BSAParams, pallas_topk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", default="1320,2640", help="key (and query) blocks a row, comma-separated")
    parser.add_argument("--sparsities", default="0.875,0.9375,0.96875")
    parser.add_argument("--heads", type=int, default=32)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print("| blocks | sparsity | k | pieces | one array ms | pieces ms | speed-up | XLA top_k + sort ms |")
    print("|---|---|---|---|---|---|---|---|")
    for blocks in (int(n) for n in args.blocks.split(",")):
        scores = jax.random.normal(jax.random.key(blocks), (1, args.heads, blocks, blocks), jnp.float32)
        pieces = "+".join(map(str, pallas_topk.row_pieces(blocks)))
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            k = BSAParams(sparsity=sparsity).num_topk(blocks)
            xla = jax.jit(lambda s, k=k: jnp.sort(jax.lax.top_k(s, k)[1].astype(jnp.int32), axis=-1))
            one, split = (jax.jit(lambda s, k=k, split=split: pallas_topk.top_k_indices(s, k, split_rows=split))
                          for split in (False, True))
            want = xla(scores)
            for kernel in (one, split):
                np.testing.assert_array_equal(kernel(scores), want)
            one_ms, split_ms, xla_ms = (Timer()(fn, scores) for fn in (one, split, xla))
            print(f"| {blocks} | {sparsity} | {k} | {pieces} | {one_ms:.3f} | {split_ms:.3f} | {one_ms / split_ms:.2f}x "
                  f"| {xla_ms:.3f} |", flush=True)


if __name__ == "__main__":
    main()
