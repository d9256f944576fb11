"""Launch settings of the Mosaic GPU BSA forward (`pallas_mosaic`) and what they ask of a Hopper CTA.

Why apart from the kernel: `KernelConfig` checks the settings and the inputs (shared memory for the index lists,
head_dim, dtypes) before any tracing of the kernel, and the tests check the shared-memory budget without lowering it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kernels.errors import BSAConfigError
from kernels.mosaic_common import BLOCK, SMEM_ALIGN, SMEM_BYTES, aligned

INDEX_ALIGN = 32  # int32 entries per 128 bytes: TMA wants 128-byte aligned shared-memory rows
ONES_ROWS = 8  # N of the row sums' product (wgmma's smallest): a [64, 8] accumulator, the sums in its column 0
MAX_RESCALE_THRESHOLD = 4  # FP8 weights then keep a 2^4 scale of their own (P_EXPONENT - 4) against e4m3's subnormals


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
    """Launch settings of the Hopper kernel.

    k_stages / v_stages: K / V blocks in flight per consumer (shared memory allows 4 in all with head_dim 128);
    producers: 1 (one producer warpgroup gathers for both consumers) or 2 (one each, so a consumer waiting on
    its V does not hold up the other's K); schedule_barrier: make the two consumers alternate on the tensor
    cores; rounds: sets of query blocks (one per consumer) each CTA works through in turn, so that its producer
    gathers the next set's q and K/V blocks while the consumers finish the last (fewer CTA start-ups and exposed latencies);
    more rounds also lengthen each CTA's walk over the head's key blocks, and where one head's K and V outgrow L2
    (168,960 tokens) the gathers then miss more (on an H100 in one launch: one round 146 ms, two 157, eight 184; L2
    hits 48% with one round, 38% with two in another call; BENCHMARKS.md);
    consumers: consumer warpgroups (query blocks) per CTA, 2 or 3. Three fill more of the tensor cores' idle time
    between one consumer's products and its next ones (each consumer's step is a chain of product, softmax,
    product), at 160 registers each instead of 232; they need schedule_barrier=False and one producer, and fit
    shared memory with FP8 operands (or head_dim 64);
    row_sums_on_tensor_cores: the softmax row sums come out of P·V's wgmma group (P times a ones column, an
    N=8 product into a [64, 8] accumulator, rescaled with the output's accumulator and reduced once at the end)
    instead of a row reduction of P per key block (on an H200 the bf16 kernel 1.06-1.13x faster with it; the sums
    are then of the rounded P the output multiplies). With FP8 operands each block's sums come from a zero accumulator
    and are added to the running sums in float32 registers: accumulated in place, an e4m3 wgmma's sums moved the
    output 8.5e-2 to 4.2e-1 on an H200, more the longer the lists; from a fresh accumulator they are 7.8e-4 to 1.6e-3
    from the reduction's over lists of 8 to 330 key blocks, as in the interpreter (BENCHMARKS.md); conditional_rescale:
    each consumer thread skips the online softmax's rescale of its output accumulator rows where none of its rows'
    maxima grew (`mosaic_common.rescaled_rows`; the same result either way; on an H100 at 84,480 tokens the bf16 kernel
    1.013-1.029x faster with it, the FP8 one 0.96-0.99x, so `KernelConfig` turns it on for bf16 only);
    rescale_threshold: a row keeps its maximum until a key block's logits exceed it by more than this (log2 units,
    0 to MAX_RESCALE_THRESHOLD; FlashAttention-4's threshold; needs conditional_rescale), so that a warp rescales on few
    steps (emulated at 84,480 tokens, random inputs, top-k 0.875 / 0.9375 / 0.96875: 27 / 42 / 60% of a warp's steps
    rescale at 0, 6 / 10 / 15% at 2; structured inputs 13 / 20 / 30% and 8 / 12 / 19%; `benchmarks/fp8_stale_max.py`).
    The weights then reach 2^threshold: with FP8 operands their e4m3 scale drops from 2^P_EXPONENT by as much (2^6
    at 2: 1.2-1.5% more error than at 0 on random inputs, at most 0.1% on the structured ones, in that emulation);
    0 by default (the FP8 kernel at 2 ran 0.96-0.99x the speed of the kernel without the conditional rescale on an
    H100); phased_walks: 0, or n > 0: each consumer starts its list at entry floor(count * (c mod n) / n), c its CTA's
    place in the launch order, and walks it round to the start. Where CTAs finish at uneven times their successors
    start at staggered times, and walking each list from its start they gather from all over the head (at 168,960
    tokens one head's K and V, 86.5 MB, outgrow the L2: one launch's gathers hit 38-48%); with n the CTAs that run at
    once (the SM count) each is about as far along its list as its start puts the others. The softmax then visits the
    blocks in another order (the same up to rounding). 0 by default here; `KernelConfig` with `key_ranges=None` sets
    the SM count for the bf16 forward where one head's K and V outgrow the L2 (`key_ranges.auto_phased_walks`: 1.04-1.07x
    the three key ranges it ran before at 168,960 tokens and top-k 0.875 on an H100; FP8 gained nothing); interpret:
    run through the Mosaic GPU interpreter on the CPU (tests). The interpreter has no wgmma on a transposed operand,
    no in-place accumulator and no register layouts, so there the products are plain dots; the pipeline, barriers,
    index gathering and softmax are the GPU's.
    """

    k_stages: int = 2
    v_stages: int = 2
    producers: int = 1
    schedule_barrier: bool = True
    rounds: int = 2
    consumers: int = 2
    row_sums_on_tensor_cores: bool = True
    conditional_rescale: bool = False
    rescale_threshold: float = 0.0
    phased_walks: int = 0
    interpret: bool = False

    def __post_init__(self):
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise BSAConfigError(f"MosaicConfig.rounds must be an int >= 1, got {self.rounds!r}")
        for name in ("k_stages", "v_stages"):
            if getattr(self, name) < 2:
                raise BSAConfigError(f"MosaicConfig.{name} must be at least 2, got {getattr(self, name)}")
        if self.producers not in (1, 2):
            raise BSAConfigError(f"MosaicConfig.producers must be 1 or 2, got {self.producers}")
        threshold = self.rescale_threshold
        numeric = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if not numeric or not 0 <= threshold <= MAX_RESCALE_THRESHOLD:
            raise BSAConfigError(
                f"MosaicConfig.rescale_threshold must be in [0, {MAX_RESCALE_THRESHOLD}] (log2 units), got "
                f"{self.rescale_threshold!r}"
            )
        if threshold and not self.conditional_rescale:
            raise BSAConfigError(
                f"MosaicConfig(rescale_threshold={threshold}) holds stale maxima to skip rescales, which only "
                "conditional_rescale=True skips: set it too, or leave rescale_threshold at 0"
            )
        if not isinstance(self.phased_walks, int) or isinstance(self.phased_walks, bool) or self.phased_walks < 0:
            raise BSAConfigError(
                f"MosaicConfig.phased_walks must be an int >= 0 (0: off; else the CTAs that run at once, the GPU's SM "
                f"count), got {self.phased_walks!r}"
            )
        if self.consumers not in (2, 3):
            raise BSAConfigError(f"MosaicConfig.consumers must be 2 or 3, got {self.consumers!r}")
        if self.consumers == 3 and (self.schedule_barrier or self.producers != 1):
            raise BSAConfigError(
                f"MosaicConfig(consumers=3) needs schedule_barrier=False and producers=1 (the turn-taking and the "
                f"per-consumer producers are for two), got {self.schedule_barrier=}, {self.producers=}"
            )


def smem_bytes(head_dim: int, k_max: int, config: MosaicConfig, fp8: bool = False) -> int:
    """Shared memory the kernel asks for: q and out tiles, K and V stages, index lists, lse rows, with row sums on the
    tensor cores the ones columns (barriers aside)."""
    out_tile = BLOCK * head_dim * 2
    tile = BLOCK * head_dim * (1 if fp8 else 2)  # q, K and V tiles
    consumers = config.consumers
    buffers = (
        consumers * tile,  # q
        consumers * out_tile,
        consumers * config.k_stages * tile,
        consumers * config.v_stages * tile,
        consumers * aligned(k_max, INDEX_ALIGN) * 4,
        consumers * BLOCK * 4,
    ) + (
        (consumers * ONES_ROWS * BLOCK * (1 if fp8 else 2),) if config.row_sums_on_tensor_cores else ()
    )
    return sum(aligned(n, SMEM_ALIGN) for n in buffers) + 3 * SMEM_ALIGN  # barriers, what Mosaic GPU reserves


def _holds(head_dim: int, k_max: int, config: MosaicConfig, fp8: bool) -> bool:
    """Whether exactly these settings fit a CTA's shared memory (no fallback)."""
    return smem_bytes(head_dim, aligned(k_max, INDEX_ALIGN), config, fp8) <= SMEM_BYTES


def fitted(config: MosaicConfig, head_dim: int, k_max: int, fp8: bool = False) -> MosaicConfig:
    """The settings the kernel runs with: `config`, or with two consumers where three do not fit lists of `k_max` key
    blocks in shared memory (long CDF lists; each consumer holds its whole list), so it runs rather than refuses."""
    if config.consumers == 3 and not _holds(head_dim, k_max, config, fp8):
        return dataclasses.replace(config, consumers=2)
    return config


def fits(head_dim: int, k_max: int, config: MosaicConfig, fp8: bool = False) -> bool:
    """Whether a CTA's shared memory holds the kernel for these lists with these settings, as `fitted` runs them
    (very long CDF lists need the Triton one)."""
    return _holds(head_dim, k_max, fitted(config, head_dim, k_max, fp8), fp8)


def supports(q: jax.Array, block_q: int, block_k: int) -> bool:
    """Whether this kernel can run on these inputs: 64-token q and k blocks, head_dim 64 or 128, bf16/f16."""
    return (
        block_q == BLOCK
        and block_k == BLOCK
        and q.shape[-1] in (64, 128)
        and q.dtype in (jnp.bfloat16, jnp.float16)
    )


def pad_indices(indices: jax.Array) -> jax.Array:
    """Pads the index lists to a multiple of 32 entries so each list starts 128-byte aligned in shared memory."""
    k_max = indices.shape[-1]
    padded = -(-k_max // INDEX_ALIGN) * INDEX_ALIGN
    if padded == k_max:
        return indices
    return jnp.pad(indices, ((0, 0), (0, 0), (0, 0), (0, padded - k_max)))
