"""What keeping a stale row maximum costs the FP8 forward in accuracy, and what room it needs, on a CPU in minutes.

Why: with `MosaicConfig.conditional_rescale` a consumer thread skips its accumulator's rescale when none of its rows'
maxima grew. FlashAttention-4 goes further: a row keeps its maximum until a key block's logits exceed it by more than a
threshold tau (log2 units), so nearly every step skips the rescale. The weights exp2(l - m) then reach 2^tau, and the
FP8 kernel rounds them to e4m3 after a 2^e scale (`fp8_operands.P_EXPONENT`, e = 8), whose largest value is 448: tau
needs e <= 8 - tau, and a smaller e moves small weights into e4m3's subnormals. This script emulates the kernel's
online softmax in float32, key block by key block in list order (ascending, as the selection returns them), with the
stale maximum, the 2^e scale, V's block scales folded into the weights (`fp8_operands.fold`) and the row sums of the
rounded weights, and gives the output's relative L2 against float32 attention on the same selection, for several
(e, tau): (8, 0) is the kernel's rounding without a threshold. It also counts the rescales a consumer warp would still
do: the share of (warp, selected key block) steps where any of the warp's 16 rows moved its maximum (the first block
of a list included). The lists on the accuracy grid are short (8 blocks at 0.875), so the shares are also counted at a
real size (`--share-grid`, 84,480 tokens by default: 165 / 82 / 41 blocks a list) on `--share-query-blocks` evenly
spaced query blocks, from the logits of their selected key blocks only.

    python3 benchmarks/fp8_stale_max.py [--grid 8x16x32 --heads 8 --sparsities 0.875,0.9375]
        [--share-grid 24x44x80 --share-heads 2 --share-query-blocks 64 --share-sparsities 0.875,0.9375,0.96875]
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bsa_inputs import parse_grid  # noqa: E402  # this script's sibling
from fp8_block_scales import emulation_arguments, inputs  # noqa: E402  # this script's sibling
from fp8_v_scale_fold import emulation_inputs, selected_token_masks  # noqa: E402  # this script's sibling

from kernels import BSAParams, select_blocks, to_chunk_order  # noqa: E402
from kernels.fp8_operands import (  # noqa: E402
    E4M3_MAX,
    P_EXPONENT,
    block_scales,
    emulated_attention_inputs,
    fold,
    round_weights,
)
from longcat_jax.metrics import rel_l2  # noqa: E402

BLOCK = 64
CHUNK = (4, 4, 4)
SETTINGS = ((8, 0.0), (4, 0.0), (4, 4.0), (5, 3.0), (6, 2.0))  # (e, tau)


def stale_maxima(block_maxima: jax.Array, tau: float) -> jax.Array:
    """Each key block's row maximum as the kernel holds it when it visits the block, [B, H, Sq, Mk] from the rows' block
    maxima [B, H, Sq, Mk] (log2 units, -inf where a block is not selected): raised to a block's maximum only where that
    exceeds it by more than tau (tau = 0: the running maximum)."""

    def step(held, block_max):
        held = jnp.where(block_max > held + tau, block_max, held)
        return held, held

    _, held = jax.lax.scan(step, jnp.full(block_maxima.shape[:-1], -jnp.inf), jnp.moveaxis(block_maxima, -1, 0))
    return jnp.moveaxis(held, 0, -1)


def warp_rescale_share(held: jax.Array, selected: jax.Array) -> float:
    """The share of a warp's steps (16 rows, one selected key block) where any row's held maximum moved, from the held
    maxima [B, H, Sq, Mk] and the selected blocks [B, H, Sq, Mk] bool."""
    before = jnp.concatenate([jnp.full(held.shape[:-1] + (1,), -jnp.inf), held[..., :-1]], axis=-1)
    moved = selected & (held != before)  # [B, H, Sq, Mk]
    b, h, sq, mk = moved.shape
    warp_moved = moved.reshape(b, h, sq // 16, 16, mk).any(axis=3)
    warp_selected = selected.reshape(b, h, sq // 16, 16, mk).any(axis=3)
    return float(warp_moved.sum() / warp_selected.sum())


def emulated_output(q, k, v, token_mask, v_folds, exponent: int, tau: float) -> tuple[jax.Array, float, float]:
    """(the FP8 kernel's output as emulated [B, Sq, H, D], the largest scaled weight, the warps' rescale share) for
    q, k, v as the kernel sees them (float32, [B, S, H, D]), token_mask [B, H, Sq, Sk] and V's folds [B, H, Mk]."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (q.shape[-1] ** -0.5 * math.log2(math.e))  # base 2
    logits = jnp.where(token_mask, logits, -jnp.inf)
    b, h, sq, sk = logits.shape
    block_maxima = logits.reshape(b, h, sq, sk // BLOCK, BLOCK).max(axis=-1)  # [B, H, Sq, Mk]
    held = stale_maxima(block_maxima, tau)
    held_per_key = jnp.repeat(held, BLOCK, axis=-1)
    final = held[..., -1:]  # the maximum the row ends with, which the accumulator's rescales bring every block to
    per_key_fold = jnp.repeat(v_folds, BLOCK, axis=-1)[:, :, None, :]  # [B, H, 1, Sk]
    # each key's weight against the maximum held when its block was visited, rounded as the kernel rounds it with a
    # 2^exponent scale (round_weights' 2^P_EXPONENT moved by the difference), then brought to the row's last maximum
    held_weights = jnp.where(token_mask, jnp.exp2(logits - jnp.where(jnp.isfinite(held_per_key), held_per_key, 0.0)),
                             0.0)
    rounded = round_weights(held_weights, per_key_fold * 2.0 ** (exponent - P_EXPONENT))
    weights = rounded * jnp.exp2(jnp.where(token_mask, held_per_key - final, 0.0))
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v) / jnp.transpose(weights.sum(axis=-1), (0, 2, 1))[..., None]
    largest = float(jnp.max(held_weights * 2.0**exponent * per_key_fold))  # what the kernel's e4m3 rounding sees
    return out, largest, warp_rescale_share(held, jnp.isfinite(block_maxima))


def rescale_shares(q, k, sparsities, query_blocks: int) -> list[dict]:
    """Per sparsity and tau: the warps' rescale share on chunk-ordered q, k [1, S, H, D], over `query_blocks` evenly
    spaced query blocks and their selected key blocks."""
    _, s, heads, d = q.shape
    k_blocks = jnp.transpose(k.astype(jnp.float32).reshape(s // BLOCK, BLOCK, heads, d), (2, 0, 1, 3))  # [H, Mk, 64, D]
    chosen = jnp.linspace(0, s // BLOCK - 1, query_blocks).astype(jnp.int32)
    q_blocks = jnp.transpose(q.astype(jnp.float32).reshape(s // BLOCK, BLOCK, heads, d)[chosen], (2, 0, 1, 3))
    rows = []
    for sparsity in sparsities:
        indices, counts = select_blocks(q, k, BSAParams(sparsity=sparsity))  # [1, H, Mq, W], ascending
        lists = indices[0][:, chosen]  # [H, Nq, W]

        def block_maxima(args):
            q_block, blocks = args  # [H, 64, D], [H, W]
            keys = jnp.take_along_axis(k_blocks, blocks[:, :, None, None], axis=1)  # [H, W, 64, D]
            return jnp.einsum("hqd,hwkd->hqwk", q_block, keys).max(axis=-1)  # [H, 64, W]

        maxima = jax.lax.map(block_maxima, (jnp.moveaxis(q_blocks, 1, 0), jnp.moveaxis(lists, 1, 0)))  # [Nq, H, 64, W]
        maxima = maxima * (d**-0.5 * math.log2(math.e))
        selected = jnp.broadcast_to(jnp.arange(lists.shape[-1]) < counts[0][:, chosen].T[:, :, None, None],
                                    maxima.shape)
        maxima = jnp.where(selected, maxima, -jnp.inf)
        for tau in sorted({tau for _, tau in SETTINGS}):
            share = warp_rescale_share(stale_maxima(maxima, tau), selected)
            rows.append({"sparsity": sparsity, "list_length": int(counts.max()), "tau": tau, "warp_rescales": share})
    return rows


def errors(q, k, v, sparsities) -> list[dict]:
    """Per sparsity and (e, tau): rel. L2 against float32 attention and the largest scaled weight."""
    qe, ke, ve = emulated_attention_inputs(q, k, v)
    v_folds = fold(block_scales(v, BLOCK))
    rows = []
    for sparsity, token_mask in selected_token_masks(q, k, sparsities):
        f32 = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask=token_mask)
        for exponent, tau in SETTINGS:
            out, largest, rescaled = emulated_output(qe, ke, ve, token_mask, v_folds, exponent, tau)
            rows.append({"sparsity": sparsity, "exponent": exponent, "tau": tau, "error": float(rel_l2(out, f32)),
                         "largest_weight": largest, "fits_e4m3": largest <= E4M3_MAX, "warp_rescales": rescaled})
    return rows


def main() -> None:
    parser = emulation_arguments(__doc__.splitlines()[0])
    parser.add_argument("--share-grid", default="24x44x80", help="latent grid of the rescale shares")
    parser.add_argument("--share-heads", type=int, default=2)
    parser.add_argument("--share-query-blocks", type=int, default=64)
    parser.add_argument("--share-sparsities", default="0.875,0.9375,0.96875")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    rows = []
    print("| inputs | sparsity | e | tau | rel. L2 vs float32 | largest scaled weight | warp steps that rescale |")
    print("|---|---|---|---|---|---|---|")
    for kind, q, k, v in emulation_inputs(grid, args.heads, args.head_dim):
        for row in errors(q, k, v, [float(s) for s in args.sparsities.split(",")]):
            rows.append({"inputs": kind, **row})
            print(f"| {kind} | {row['sparsity']} | {row['exponent']} | {row['tau']:g} | {row['error']:.3e} "
                  f"| {row['largest_weight']:.1f} | {row['warp_rescales']:.3f} |", flush=True)
    share_grid = parse_grid(args.share_grid)
    print("\n| inputs | grid | sparsity | blocks a list | tau | warp steps that rescale |")
    print("|---|---|---|---|---|---|")
    for kind in ("random", "structured"):
        q, k, _ = (to_chunk_order(x, share_grid, CHUNK)
                   for x in inputs(kind, share_grid, args.share_heads, args.head_dim))
        sparsities = [float(s) for s in args.share_sparsities.split(",")]
        for row in rescale_shares(q, k, sparsities, args.share_query_blocks):
            rows.append({"inputs": kind, "grid": args.share_grid, **row})
            print(f"| {kind} | {args.share_grid} | {row['sparsity']} | {row['list_length']} | {row['tau']:g} "
                  f"| {row['warp_rescales']:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
