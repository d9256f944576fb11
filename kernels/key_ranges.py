"""Keeping the forward's gathers in the L2 cache: one launch per range of key blocks, merging the partial
attentions, or (the bf16 Mosaic kernel) one launch whose CTAs walk their lists from staggered entries.

Why: the kernels gather each query block's selected K/V blocks from anywhere in its head, so the CTAs
running together touch the whole head's K and V. Where that is larger than the L2 cache (one head at
168,960 tokens: 86 MB against the H100's 50 MB), more gathers miss L2. One launch per key range keeps the
working set to that range (at 168,960 tokens on an H100 the Triton kernel ran 1.10x faster with two; the bf16 Mosaic
kernel at top-k 0.875 hit L2 38% in one launch and 58% in each of two, 1.17-1.19x faster, and three were 1.10x two);
the partial outputs are merged by their log-sum-exps (flash-decoding). The bf16 Mosaic kernel does better in one
launch with phased walks (`MosaicConfig.phased_walks`, `auto_phased_walks`): the CTAs running together then gather
from places spread over the head, so that each block's K and V are fetched from memory about once a round.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

L2_WORKING_SET_BYTES = 48 * 2**20  # K+V bytes of one head that still gather from the H100's L2
HOPPER_SM_COUNT = 132  # the H100's and H200's SMs, where the device does not report its own
# the FP8 forward (e4m3 K and V): above these bytes of one head's K+V, and with lists at least this long, two launches
FP8_SPLIT_BYTES = 32 * 2**20
FP8_SPLIT_MIN_ENTRIES = 128


def auto_key_ranges(num_k_tokens: int, head_dim: int, itemsize: int) -> int:
    """How many key ranges keep one head's K and V of each range under `L2_WORKING_SET_BYTES`."""
    return max(1, math.ceil(2 * num_k_tokens * head_dim * itemsize / L2_WORKING_SET_BYTES))


def sm_count() -> int:
    """The SMs of the default device (the CTAs that run at once, one each), `HOPPER_SM_COUNT` where it reports none."""
    return getattr(jax.devices()[0], "core_count", None) or HOPPER_SM_COUNT


def auto_phased_walks(num_k_tokens: int, head_dim: int, itemsize: int) -> int:
    """`MosaicConfig.phased_walks` of the bf16 Mosaic forward's one launch: the SM count where one head's K+V outgrow
    `L2_WORKING_SET_BYTES`, else 0 (off).

    Measured on an H100 (BENCHMARKS.md, thirty-seventh session; 132 phases): at 168,960 tokens (86 MB of K+V a head)
    one phased launch took 118.5-119.6 ms at top-k 0.875 where three key ranges with their merge (the rule before,
    whose gathers hit L2 58% in each range against 38% in one plain launch) took 124.6-126.5 and one plain launch
    151.8, and 1.06-1.09x / 1.04-1.06x one plain launch at 0.9375 / 0.96875 (where the lists were too short to split); at
    84,480 tokens (43 MB) 1.01x at 0.875 and 1.00x at 0.9375, so the rule keeps to the heads that outgrow the L2. The
    softmax visits each list in another order, the same up to rounding.
    """
    return sm_count() if 2 * num_k_tokens * head_dim * itemsize > L2_WORKING_SET_BYTES else 0


def auto_fp8_key_ranges(num_k_tokens: int, head_dim: int, k_max: int) -> int:
    """Launches of the FP8 forward: two where one head's e4m3 K and V exceed `FP8_SPLIT_BYTES` and the lists hold at
    least `FP8_SPLIT_MIN_ENTRIES` key blocks, else one.

    Measured on an H100 (BENCHMARKS.md, 2026-12-05), kernel with split and merge against one launch: at 168,960 tokens
    (43 MB of K+V a head) 1.07x with lists of 330 key blocks and 1.04x with 165, 0.98x with 82; at 84,480 tokens
    (21.6 MB) 0.82-0.95x. The FP8 kernel gathers fast enough that L2 misses show below the bf16 kernel's 48 MB; with
    short lists the merge pass costs more than the misses.
    """
    if 2 * num_k_tokens * head_dim > FP8_SPLIT_BYTES and k_max >= FP8_SPLIT_MIN_ENTRIES:
        return 2
    return 1


def split_by_key_range(
    indices: jax.Array, counts: jax.Array, num_k_blocks: int, ranges: int, *, ascending: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each list's entries per key range, as slices of the list sorted ascending.

    indices [B, H, Mq, K_max] (entries past counts ignored), counts [B, H, Mq]. Range r covers key blocks
    [r * w, (r + 1) * w) with w = ceil(Mk / ranges). ascending: each list's first `counts` entries are ascending
    already (as the selection writes them), so the sort is left out (1.0 ms of a 168,960-token FP8 call on an H100).
    Returns (the indices sorted, with Mk past each list's count; starts [R, B, H, Mq]; counts [R, B, H, Mq]): range
    r of a list is entries [starts[r], starts[r] + counts[r]).
    """
    valid = jnp.arange(indices.shape[-1], dtype=jnp.int32) < counts[..., None]
    indices = jnp.where(valid, indices, num_k_blocks)
    if not ascending:
        indices = jnp.sort(indices, axis=-1)
    width = -(-num_k_blocks // ranges)
    bounds = jnp.arange(1, ranges, dtype=jnp.int32) * width  # [R - 1]
    below = jnp.sum(indices[None] < bounds[:, None, None, None, None], axis=-1, dtype=jnp.int32)
    ends = jnp.concatenate([below, counts[None]], axis=0)  # [R, B, H, Mq]
    starts = jnp.concatenate([jnp.zeros_like(counts)[None], ends[:-1]], axis=0)
    return indices, starts, ends - starts


def merge_partial_attention(outs: list[jax.Array], lses: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """One attention from its parts over disjoint key sets.

    outs: [B, S, H, D] each, normalised within its part; lses: [B, H, S] float32 base 2 (-inf where a part
    saw no key). Returns (out [B, S, H, D] in the outs' dtype, lse [B, H, S]); rows no part saw stay 0, -inf.
    """
    lse = jnp.stack(lses)  # [R, B, H, S]
    top = jnp.max(lse, axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weights = jnp.exp2(lse - top)  # 0 where a part saw nothing
    total = jnp.sum(weights, axis=0)
    weights = weights / jnp.where(total > 0, total, 1.0)
    out = sum(
        o.astype(jnp.float32) * jnp.swapaxes(w, 1, 2)[..., None] for o, w in zip(outs, weights, strict=True)
    )
    return out.astype(outs[0].dtype), top + jnp.log2(total)
