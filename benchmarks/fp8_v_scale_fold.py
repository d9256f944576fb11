"""What folding V's per-block scales into the FP8 softmax weights costs in accuracy, on a CPU in a minute.

Why: the FP8 BSA kernel kept its output accumulator in units of the current key block's V scale (before the fold it
now makes, `fp8_operands.fold`), so it rescaled the accumulator at every block (64 multiplies a consumer thread, of
about 406 instructions executed a consumer warp and block pair, the producer's included, on an H100: BENCHMARKS.md
"What bounds the FP8 kernel"), even where the row maximum did not move. Folding each block's V scale into its weights
against one reference a head (P_j * s_j / S before the e4m3 rounding) leaves the accumulator in the units of S, so a
rescale is only needed when the maximum grows (FlashAttention-4's conditional rescale). The cost is precision: a block
whose V scale is far below the head's largest rounds its weights among e4m3's subnormals. This script measures that
cost in float32 emulation, on the same selection, against float32 attention:

- "unfolded": the rounding the kernel had before the fold (`fp8_operands.emulated_attention_inputs`, weights rounded by
  `round_weights` with no fold);
- "folded": the same operands, each block's weights times its fold s_j / S (`fp8_operands.fold`, S the head's largest
  V block scale) before the rounding and divided by it after, the row sums of those rounded weights.

Inputs: random normal, the structured (video-like) ones of `bsa_inputs.py`, and the structured ones with each V block
scaled by 10^u, u uniform in [-2, 0] (blocks of very different size, where the fold loses most).

    python3 benchmarks/fp8_v_scale_fold.py [--grid 8x16x32 --heads 8 --sparsities 0.875,0.9375]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bsa_inputs import parse_grid  # noqa: E402  # this script's sibling
from fp8_block_scales import emulation_arguments, inputs  # noqa: E402  # this script's sibling

from kernels import BSAParams, block_mask_from_indices, select_blocks, to_chunk_order  # noqa: E402
from kernels.fp8_operands import block_scales, emulated_attention_inputs, fold, round_weights  # noqa: E402
from longcat_jax.metrics import rel_l2  # noqa: E402

BLOCK = 64
CHUNK = (4, 4, 4)


def spread_v_blocks(v: jax.Array, key: jax.Array) -> jax.Array:
    """Chunk-ordered v [B, S, H, D] with each 64-token block of each head scaled by 10^u, u uniform in [-2, 0]."""
    b, s, h, _ = v.shape
    exponents = jax.random.uniform(key, (b, s // BLOCK, h), minval=-2.0, maxval=0.0)  # [B, M, H]
    return (v.astype(jnp.float32) * jnp.repeat(10.0**exponents, BLOCK, axis=1)[..., None]).astype(v.dtype)


INPUT_KINDS = ("random", "structured", "structured, V blocks spread")


def emulation_inputs(grid, heads: int, head_dim: int):
    """(kind, q, k, v) for each of INPUT_KINDS: chunk-ordered bf16 [1, T*H*W, heads, head_dim] on `grid`."""
    for kind in INPUT_KINDS:
        q, k, v = (to_chunk_order(x, grid, CHUNK) for x in inputs(kind.split(",")[0], grid, heads, head_dim))
        if kind.endswith("spread"):
            v = spread_v_blocks(v, jax.random.key(1))
        yield kind, q, k, v


def selected_token_masks(q, k, sparsities):
    """(sparsity, token mask [B, H, Sq, Sk] bool) of the top-k selection of chunk-ordered q, k at each sparsity."""
    for sparsity in sparsities:
        indices, counts = select_blocks(q, k, BSAParams(sparsity=sparsity))
        mask = block_mask_from_indices(indices, counts, k.shape[1] // BLOCK)  # [B, H, Mq, Mk]
        yield sparsity, jnp.repeat(jnp.repeat(mask, BLOCK, axis=2), BLOCK, axis=3)


def masked_attention(q, k, v, token_mask, weights_of):
    """Attention of float32 q, k, v [B, S, H, D] over token_mask [B, H, Sq, Sk]; weights_of(w) gives the weights that
    multiply v from the unnormalised softmax weights w [B, H, Sq, Sk] (the rounding under test), and the row sums are
    theirs, as the kernel's are of its rounded weights. Its own rather than `kernels.reference.blocked_attention`: that
    one divides by the unrounded weights' sums."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    logits = jnp.where(token_mask, logits, -jnp.inf)
    w = jnp.where(token_mask, jnp.exp(logits - logits.max(axis=-1, keepdims=True)), 0.0)
    p = weights_of(w)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v) / jnp.transpose(p.sum(axis=-1), (0, 2, 1))[..., None]


def errors(q, k, v, sparsities) -> list[dict[str, float]]:
    """Per sparsity, rel. L2 against float32 attention of the kernel's rounding before the fold (unfolded) and with
    V's block scales folded into P (the kernel's since ece9bd8)."""
    qe, ke, ve = emulated_attention_inputs(q, k, v)
    v_folds = fold(block_scales(v, BLOCK))  # [B, H, Mk], s_j / S <= 1
    per_key_fold = jnp.repeat(v_folds, BLOCK, axis=-1)[:, :, None, :]  # [B, H, 1, Sk]
    rows = []
    for sparsity, token_mask in selected_token_masks(q, k, sparsities):
        f32 = masked_attention(*(x.astype(jnp.float32) for x in (q, k, v)), token_mask, lambda w: w)
        unfolded = masked_attention(qe, ke, ve, token_mask, round_weights)
        folded = masked_attention(qe, ke, ve, token_mask, lambda w: round_weights(w, per_key_fold))
        rows.append({"sparsity": sparsity, "unfolded": float(rel_l2(unfolded, f32)), "folded": float(rel_l2(folded, f32)),
                     "smallest_fold": float(v_folds.min())})
    return rows


def main() -> None:
    parser = emulation_arguments(__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    rows = []
    print("| inputs | sparsity | unfolded (before the fold) vs float32 | V scales folded into P vs float32 | smallest s_j / S |")
    print("|---|---|---|---|---|")
    for kind, q, k, v in emulation_inputs(grid, args.heads, args.head_dim):
        for row in errors(q, k, v, [float(s) for s in args.sparsities.split(",")]):
            row = {"inputs": kind, **row}
            rows.append(row)
            print(f"| {kind} | {row['sparsity']} | {row['unfolded']:.3e} | {row['folded']:.3e} | {row['smallest_fold']:.2e} |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
