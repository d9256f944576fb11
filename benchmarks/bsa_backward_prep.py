"""Time what the BSA backward does besides its two kernels, at the real sizes: the transposed lists (key block ->
query blocks, `selection.transpose_selection`) next to the sorted-mask form it replaced and to its running sum in
int32 (its int16 sum's predecessor), delta = rowsum(out * do) as the chunk-ordered backward takes it
(`sparse_attention.backward_delta`, [B, H, S]; until the thirty-fifth session this script timed the sum without its
transpose to [B, H, S]), and the longest-first order of the Mosaic backward (an
argsort of the list lengths).

Random bf16 q, k (B=1, 32 heads of 128 by default), the top-k selection of each sparsity; both list forms are
checked equal before they are timed. On a CPU the selection runs in XLA and the grids should be small.

    python3 benchmarks/bsa_backward_prep.py [--sizes 24x44x80,48x44x80] [--sparsities 0.875,0.9375] [--heads 32]
"""

from __future__ import annotations

import argparse
import functools
import math

import jax
import jax.numpy as jnp
from bsa_attention import Timer  # this script's sibling

from kernels import BSAParams, select_blocks
from kernels.selection import block_mask_from_indices, indices_from_block_mask, transpose_selection
from kernels.sparse_attention import backward_delta


def sorted_mask_form(indices: jax.Array, counts: jax.Array, num_k_blocks: int) -> tuple[jax.Array, jax.Array]:
    """The transposed lists as they were built before (commit 4f6d2f8): the dense mask, transposed, sorted per row."""
    mask = block_mask_from_indices(indices, counts, num_k_blocks)
    return indices_from_block_mask(jnp.swapaxes(mask, -1, -2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="24x44x80,48x44x80", help="latent grids TxHxW, comma-separated")
    parser.add_argument("--sparsities", default="0.875,0.9375")
    parser.add_argument("--heads", type=int, default=32)
    args = parser.parse_args()
    backend = "pallas" if jax.default_backend() == "gpu" else "xla"
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print("| grid | sparsity | transposed lists: sorted mask ms | rank form, int32 sum ms | rank form ms (ours) | delta ms "
          "| longest-first argsort ms |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        latent = tuple(int(n) for n in size.split("x"))
        shape = (1, math.prod(latent), args.heads, 128)  # [B, S, H, D] chunk order
        q, k, out, do = (jax.random.normal(key, shape, jnp.bfloat16) for key in jax.random.split(jax.random.key(0), 4))
        num_k_blocks = shape[1] // 64
        before = jax.jit(sorted_mask_form, static_argnums=2)
        ours = jax.jit(transpose_selection, static_argnums=2)
        int32_sum = jax.jit(functools.partial(transpose_selection, rank_dtype=jnp.int32), static_argnums=2)
        delta = jax.jit(backward_delta)
        order = jax.jit(lambda c: jnp.argsort(-c, axis=-1, stable=True))
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            params = BSAParams(sparsity=sparsity)
            indices, counts = jax.jit(lambda a, b, p=params: select_blocks(a, b, p, backend=backend))(q, k)
            expected = before(indices, counts, num_k_blocks)
            for form in (ours, int32_sum):
                got = form(indices, counts, num_k_blocks)
                if not all(bool(jnp.array_equal(a, b)) for a, b in zip(expected, got, strict=True)):
                    raise SystemExit(f"{size} {sparsity}: the forms of the transposed lists differ")
            print(f"| {size} | {sparsity} | {Timer()(before, indices, counts, num_k_blocks):.3f} | "
                  f"{Timer()(int32_sum, indices, counts, num_k_blocks):.3f} | "
                  f"{Timer()(ours, indices, counts, num_k_blocks):.3f} | {Timer()(delta, out, do):.3f} | "
                  f"{Timer()(order, counts):.3f} |", flush=True)


if __name__ == "__main__":
    main()
