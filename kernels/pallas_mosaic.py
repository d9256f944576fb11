"""Block-sparse attention forward as a Pallas Mosaic GPU kernel for Hopper (wgmma + TMA, warp-specialised).

Why a second forward: the Triton lowering runs one warpgroup per query block with no warp specialisation,
so the softmax of a 64x64 tile cannot hide behind the tensor cores. Here each CTA holds two (or three,
`MosaicConfig.consumers`) consumer warpgroups, each on its own 64-token query block with its own key-block list,
and a producer warpgroup that gathers the selected K and V blocks into shared memory by TMA, a few steps ahead.
Two consumers can take turns on the tensor cores (a shared "schedule" barrier), as in FlashAttention-3. CTAs are
launched head by head (so the gathered blocks come from L2) and each works through `MosaicConfig.rounds` sets of
query blocks (one per consumer); on an H100 this ran 1.2-1.6x the Triton kernel (BENCHMARKS.md), so
`KernelConfig` picks it on Hopper.
The softmax row sums come from the tensor cores (`MosaicConfig.row_sums_on_tensor_cores`; bf16 1.06-1.13x, FP8 up to
1.03x).

Same contract and outputs as `pallas_triton.triton_forward` (out and a base-2 log-sum-exp), so either backward
(Triton or `pallas_mosaic_backward`) serves both. Only 64-token query and key blocks, head_dim 64 or 128, bf16/f16. On a key
grid padded to whole chunks, padded keys get logit -inf (`padding.mask_padded_keys`, on a wgmma-layout iota).

With FP8 operands (`fp8_operands.Fp8Operands`, `KernelConfig(fp8=True)`) both products are e4m3 wgmmas: q·k^T as
above, and P·V with P rounded to e4m3 in registers, each thread's bytes read as the 8-bit A operand's
(`mosaic_common.e4m3_weights_operand`: each 16 keys permuted, as V^T's keys are), and V^T's K-major [D, 64] tiles
gathered from a transposed V. Each key block's V scale is folded into its weights (`fp8_operands.fold`), so the
accumulator stays in the head's V scale.
The accumulator's rescale is skipped by each thread whose rows kept their maximum (`MosaicConfig.conditional_rescale`,
`mosaic_common.rescaled_rows`), which a threshold on the maximum's growth makes most steps
(`MosaicConfig.rescale_threshold`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from kernels.errors import BSAConfigError
from kernels.fp8_operands import P_EXPONENT, to_weights_key_order
from kernels.mosaic_common import (
    BLOCK,
    LOG2E,
    SMEM_BYTES,
    dot_f32,
    e4m3_weights_operand,
    interpret_params,
    rescaled_rows,
    tile_transforms,
)
from kernels.mosaic_config import ONES_ROWS, MosaicConfig, fits, fitted, pad_indices, smem_bytes
from kernels.padding import GridPadding, mask_padded_keys

# registers per thread of a consumer / producer warpgroup: (consumers * theirs + producers * 40 or 24) * 128 threads
# within the SM's 65,536
_CONSUMER_REGISTERS = {(2, 1): 232, (2, 2): 216, (3, 1): 160}
_PRODUCER_REGISTERS = {2: 40, 3: 24}
_INDEX_CHUNK = 256  # the most entries one TMA copies along a dimension


def mosaic_forward(
    q, k, v, indices, starts, counts, config: MosaicConfig, raster_out=None, key_padding: GridPadding | None = None,
    fp8_scales=None, out_dtype=None,
):
    """Forward kernel: (out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] float32, base 2).

    q [B, Sq, H, D], k / v [B, Sk, H, D] chunk-ordered with 64-token blocks; indices [B, H, Mq, K_max]
    int32; each query block visits entries [starts, starts + counts) of its list (starts, counts [B, H, Mq]).
    raster_out: None (out in chunk order, like q) or (latent_shape, chunk_shape) of q: out is then written
    straight to (T, H, W) raster order, one copy per run of a chunk's consecutive tokens, which saves the
    reorder pass after the kernel; lse stays in chunk order. key_padding: None, or the padding of k's grid (k
    then holds the padded grid): padded keys get no weight.
    fp8_scales: None, or with FP8 operands (`fp8_operands.Fp8Operands`: q and k in e4m3, v transposed to [B, H, D, Sk]
    in e4m3) their float32 scales (`Fp8Operands.kernel_scales`): per list entry [B, H, Mq, K_max] the logit scale (its
    query block's scale times its key block's) and the base-2 exponent of its key block's V fold, and the heads' V
    scales [B, H]; out is then in `out_dtype`.
    """
    b, sq, h, d = q.shape
    mq = sq // BLOCK
    fp8 = fp8_scales is not None
    dtype = out_dtype if fp8 else q.dtype  # the output's
    operand_dtype = q.dtype
    indices = pad_indices(indices)
    k_max = indices.shape[-1]
    config = fitted(config, d, k_max, fp8)
    k_stages, v_stages = config.k_stages, config.v_stages
    if not fits(d, k_max, config, fp8):
        raise BSAConfigError(
            f"the Mosaic BSA kernel needs {smem_bytes(d, k_max, config, fp8)} bytes of shared memory with "
            f"k_stages={k_stages}, v_stages={v_stages}, head_dim {d} and {k_max} key blocks per list; a Hopper CTA "
            f"has {SMEM_BYTES}: lower MosaicConfig.k_stages or v_stages (k_stages + v_stages <= 4 fits head_dim "
            "128), or use KernelConfig(forward='triton') for lists this long"
        )
    index_chunks = [(start, min(_INDEX_CHUNK, k_max - start)) for start in range(0, k_max, _INDEX_CHUNK)]
    rounds, consumers = config.rounds, config.consumers
    num_ctas = -(-mq // (consumers * rounds))  # per (batch, head)
    logit_scale = d**-0.5 * LOG2E  # logits in base-2 units
    tc_sums = config.row_sums_on_tensor_cores

    def fragment(x, layout):
        # the interpreter has no register layouts
        return x if config.interpret else plgpu.layout_cast(x, layout)

    def key_positions():
        """[64, 64] int32: each logit's token position inside its key block (the column)."""
        if config.interpret:
            return lax.broadcasted_iota(jnp.int32, (BLOCK, BLOCK), 1)
        return plgpu.broadcasted_iota(jnp.int32, (BLOCK, BLOCK), 1, layout=plgpu.Layout.WGMMA)

    def kernel(idx_ref, starts_ref, counts_ref, q_ref, k_ref, v_ref, scales_refs, ones_ref, out_ref, lse_ref, scoped):
        bi = lax.axis_index("batch")
        hi = lax.axis_index("heads")
        cta = lax.axis_index("ctas")
        wg = lax.axis_index("wg")
        (q_smem2, o_smem2, k_smem2, v_smem2, idx_smem2, lse_smem2, *extra_smem2), barriers = scoped
        ones_smem2 = extra_smem2[-1] if tc_sums else None
        q_barriers, q_consumed, idx_barriers, k_barriers, v_barriers, k_consumed, v_consumed, schedule = barriers[:8]
        ones_loaded = barriers[8] if tc_sums else None

        def query_block(r, w):
            """Consumer w's query block in round r (clamped; `valid` says whether it exists)."""
            return jnp.minimum((cta * rounds + r) * consumers + w, mq - 1)

        def valid(r, w):
            return (cta * rounds + r) * consumers + w < mq

        def count_of(r, w):
            return jnp.where(valid(r, w), counts_ref[bi, hi, query_block(r, w)], 0)

        def entry_of(step, count):
            """The list entry (from the list's start) visited at `step` of a walk over `count` entries: `step`, or with
            `phased_walks` from its phase's entry, round to the start."""
            if not config.phased_walks:
                return step
            place = lax.rem((bi * h + hi) * num_ctas + cta, jnp.int32(config.phased_walks))
            entry = step + place * count // config.phased_walks
            return jnp.where(entry >= count, entry - count, entry)

        def fetch_blocks(w, step, block):
            """Gathers key block `block` into consumer w's K and V slots of its `step`-th block overall."""
            k_slot = lax.rem(step, jnp.int32(k_stages))
            v_slot = lax.rem(step, jnp.int32(v_stages))
            k_barrier = w * k_stages + k_slot
            v_barrier = w * v_stages + v_slot
            rows = pl.ds(block * BLOCK, BLOCK)

            @pl.when(step >= k_stages)
            def _wait_k():
                plgpu.barrier_wait(k_consumed.at[k_barrier])

            plgpu.copy_gmem_to_smem(k_ref.at[bi, rows, hi], k_smem2.at[w, k_slot], k_barriers.at[k_barrier])

            @pl.when(step >= v_stages)
            def _wait_v():
                plgpu.barrier_wait(v_consumed.at[v_barrier])

            v_block = v_ref.at[bi, hi, :, rows] if fp8 else v_ref.at[bi, rows, hi]  # [D, 64] (V^T) or [64, D]
            plgpu.copy_gmem_to_smem(v_block, v_smem2.at[w, v_slot], v_barriers.at[v_barrier])

        def produce(served):
            """The producer warpgroup's work for the consumers it serves, round by round: index lists, q, K/V blocks."""

            def produce_round(r, done):
                # done[i]: blocks gathered so far for served[i], over all rounds (their stage slots run on)
                for w in served:
                    for c, (start, size) in enumerate(index_chunks):
                        plgpu.copy_gmem_to_smem(
                            idx_ref.at[bi, hi, query_block(r, w), pl.ds(start, size)],
                            idx_smem2.at[w, pl.ds(start, size)],
                            idx_barriers.at[w * len(index_chunks) + c],
                        )
                for w in served:
                    pl.when(r > 0)(lambda: plgpu.barrier_wait(q_consumed.at[w]))  # last round's q is read
                    rows = pl.ds(query_block(r, w) * BLOCK, BLOCK)
                    plgpu.copy_gmem_to_smem(q_ref.at[bi, rows, hi], q_smem2.at[w], q_barriers.at[w])
                for w in served:
                    for c in range(len(index_chunks)):
                        plgpu.barrier_wait(idx_barriers.at[w * len(index_chunks) + c])
                counts = [count_of(r, w) for w in served]
                firsts = [starts_ref[bi, hi, query_block(r, w)] for w in served]

                @pl.loop(0, functools.reduce(jnp.maximum, counts))
                def _gather(step):
                    for i, w in enumerate(served):
                        @pl.when(step < counts[i])
                        def _fetch(i=i, w=w):
                            fetch_blocks(w, done[i] + step, idx_smem2[w, firsts[i] + entry_of(step, counts[i])])

                return tuple(n + c for n, c in zip(done, counts, strict=True))

            done = lax.fori_loop(0, rounds, produce_round, tuple(jnp.int32(0) for _ in served))
            for i, w in enumerate(served):
                # wait out the last releases, so every barrier phase is observed before the CTA ends
                plgpu.barrier_wait(q_consumed.at[w])
                for stages, consumed in ((k_stages, k_consumed), (v_stages, v_consumed)):
                    @pl.loop(jnp.maximum(done[i] - stages, 0), done[i])
                    def _drain(step):
                        plgpu.barrier_wait(consumed.at[w * stages + lax.rem(step, jnp.int32(stages))])

        def schedule_sync():
            if config.schedule_barrier:
                plgpu.barrier_arrive(schedule)
                plgpu.barrier_wait(schedule)

        @pl.when(wg < consumers)
        def _consumer():
            plgpu.set_max_registers(_CONSUMER_REGISTERS[consumers, config.producers], action="increase")
            q_smem, o_smem = q_smem2.at[wg], o_smem2.at[wg]
            lse_smem = lse_smem2.at[wg]
            k_smem, v_smem = k_smem2.at[wg], v_smem2.at[wg]
            # FP8 weights are 2^P_EXPONENT larger, less the room a stale maximum lets them grow into (e4m3 ends at 448)
            weight_exponent = P_EXPONENT - math.ceil(config.rescale_threshold) if fp8 else 0
            if tc_sums:  # the ones column of the row sums' product, [8, 64] as a K-major B operand
                ones_smem = ones_smem2.at[wg]
                plgpu.copy_gmem_to_smem(ones_ref, ones_smem, ones_loaded.at[wg])
                plgpu.barrier_wait(ones_loaded.at[wg])

            def consume_round(r, done):
                # done: key blocks this consumer visited in earlier rounds (its stage slots run on)
                counts = [count_of(r, w) for w in range(consumers)]
                count = functools.reduce(lambda n, w: jnp.where(wg == w, counts[w], n), range(1, consumers), counts[0])
                if key_padding is not None or fp8:  # where this consumer's list starts, to read its entries' indices
                    own_block = query_block(r, wg)
                    first = starts_ref[bi, hi, own_block]
                plgpu.barrier_wait(q_barriers.at[wg])
                row_max = fragment(jnp.full((BLOCK,), -jnp.inf, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
                if tc_sums:  # [64, 8]: column 0 holds the row sums, the other columns 0
                    row_sum = fragment(jnp.full((BLOCK, ONES_ROWS), 0, jnp.float32), plgpu.Layout.WGMMA)
                else:
                    row_sum = fragment(jnp.full((BLOCK,), 0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
                acc = fragment(jnp.full((BLOCK, d), 0, jnp.float32), plgpu.Layout.WGMMA)

                def k_barrier_of(step):
                    return wg * k_stages + lax.rem(step, jnp.int32(k_stages))

                def wait_k(j):
                    # each block's K is waited for while the tensor cores still work on the block before it
                    pl.when(j < count)(lambda: plgpu.barrier_wait(k_barriers.at[k_barrier_of(done + j)]))

                wait_k(0)
                pl.when(wg == 1)(schedule_sync)

                def entry_scales(j):
                    """FP8: entry j's logit scale (its query and key blocks' scales) and V fold exponent, read from
                    global memory (j clamped to the list; an empty list that starts past the last entry, as a key
                    range's may, reads the last)."""
                    at = jnp.minimum(first + entry_of(jnp.maximum(jnp.minimum(j, count - 1), 0), count),
                                     fp8_scales[0].shape[-1] - 1)
                    return scales_refs[0][bi, hi, own_block, at], scales_refs[1][bi, hi, own_block, at]

                def visit_key_block(j, carry):
                    # with FP8 operands the carry ends with this entry's scales, read a step ahead so that their
                    # latency hides behind the last step
                    acc, row_max, row_sum, *fp8_carry = carry
                    step = done + j
                    k_slot = lax.rem(step, jnp.int32(k_stages))
                    v_slot = lax.rem(step, jnp.int32(v_stages))
                    k_barrier = k_barrier_of(step)
                    v_barrier = wg * v_stages + v_slot
                    # the key block's index, for masking padded keys: read from global memory (the shared-memory
                    # list may already hold the next round's), issued before the product to hide its latency
                    block = None if key_padding is None else idx_ref[bi, hi, own_block, first + entry_of(j, count)]
                    # the base-2 logit scale, with FP8 operands times the entry's query and key block scales
                    scale = logit_scale
                    if fp8:
                        entry_logit_scale, fold_exponent = fp8_carry
                        upcoming = entry_scales(j + 1)
                        scale = logit_scale * entry_logit_scale

                    if config.interpret:
                        logits = dot_f32(q_smem[...], k_smem[k_slot], transpose_b=True)
                        schedule_sync()
                    else:
                        def logits_scope(acc_ref):
                            plgpu.wgmma(acc_ref, q_smem, k_smem.at[k_slot].transpose((1, 0)))
                            schedule_sync()
                            return acc_ref[...]

                        logits = pl.run_scoped(logits_scope, plgpu.ACC((BLOCK, BLOCK), jnp.float32))  # [64, 64]
                    plgpu.barrier_arrive(k_consumed.at[k_barrier])
                    if key_padding is not None:
                        logits = mask_padded_keys(logits, key_padding, block, key_positions())
                    block_max = logits.max(axis=1) * scale
                    if config.rescale_threshold:  # a row's maximum held until a block exceeds it by the threshold
                        new_max = jnp.where(block_max > row_max + config.rescale_threshold, block_max, row_max)
                    else:
                        new_max = jnp.maximum(row_max, block_max)
                    correction = jnp.exp2(row_max - new_max)
                    # FP8: the weights carry 2^P_EXPONENT and their key block's V fold (its exponent, <= 0)
                    offset = new_max - (weight_exponent + fold_exponent) if fp8 else new_max
                    weights = jnp.exp2(logits * scale - lax.broadcast_in_dim(offset, logits.shape, [0]))
                    unfold = jnp.exp2(-fold_exponent) if fp8 else None  # the row sums count the unfolded weights
                    if config.conditional_rescale:
                        acc = rescaled_rows(acc, correction, row_max, new_max, config.interpret)
                    else:
                        acc = acc * lax.broadcast_in_dim(correction, acc.shape, [0])
                    if tc_sums:
                        row_sum = row_sum * lax.broadcast_in_dim(correction, row_sum.shape, [0])
                    else:
                        weight_sums = weights.sum(axis=1)
                        row_sum = row_sum * correction + (weight_sums * unfold if fp8 else weight_sums)
                    if fp8 and not config.interpret:
                        # P·V's 8-bit A operand in registers, its keys in V^T's order; before the barrier, which takes
                        # no 8-bit arrays
                        weights = e4m3_weights_operand(weights)
                        acc, row_sum, new_max = lax.optimization_barrier((acc, row_sum, new_max))
                    else:
                        weights = weights.astype(operand_dtype)
                        acc, row_sum, new_max, weights = lax.optimization_barrier((acc, row_sum, new_max, weights))
                    if config.schedule_barrier:
                        plgpu.barrier_arrive(schedule)
                    plgpu.barrier_wait(v_barriers.at[v_barrier])
                    if config.schedule_barrier:
                        plgpu.barrier_wait(schedule)

                    if config.interpret:
                        # V^T's keys are in the order the native kernel's A operand holds the weights' columns
                        acc = acc + dot_f32(to_weights_key_order(weights, axis=1) if fp8 else weights, v_smem[v_slot],
                                            transpose_b=fp8)
                        if tc_sums:
                            weight_sums = dot_f32(weights, ones_smem[...], transpose_b=True)
                            row_sum = row_sum + (weight_sums * unfold if fp8 else weight_sums)
                        wait_k(j + 1)
                    else:
                        v_operand = v_smem.at[v_slot].transpose((1, 0)) if fp8 else v_smem.at[v_slot]

                        def values_state(refs):
                            plgpu.wgmma(refs[0], weights, v_operand)
                            if tc_sums:
                                plgpu.wgmma(refs[1], weights, ones_smem.transpose((1, 0)))
                            wait_k(j + 1)

                        if tc_sums and fp8:
                            # an e4m3 wgmma adds into its accumulator at reduced precision, which loses more of a
                            # block's sum the larger the running sum grows: each block's sums start from zero and are
                            # added to the running sums in float32 registers
                            block_sums = fragment(jnp.zeros((BLOCK, ONES_ROWS), jnp.float32), plgpu.Layout.WGMMA)
                            acc, block_sums = pl.run_state(values_state)(
                                (plgpu.ACC.init(acc), plgpu.ACC.init(block_sums)))
                            row_sum = row_sum + block_sums * unfold
                        elif tc_sums:
                            acc, row_sum = pl.run_state(values_state)((plgpu.ACC.init(acc), plgpu.ACC.init(row_sum)))
                        else:
                            (acc,) = pl.run_state(values_state)((plgpu.ACC.init(acc),))
                    plgpu.barrier_arrive(v_consumed.at[v_barrier])
                    return acc, new_max, row_sum, *(upcoming if fp8 else ())

                acc, row_max, row_sum, *_ = lax.fori_loop(
                    0, count, visit_key_block, (acc, row_max, row_sum, *(entry_scales(0) if fp8 else ())))
                plgpu.barrier_arrive(q_consumed.at[wg])  # the producer may load the next round's q

                def idle_step(_, carry):
                    # keeps the turn-taking in step when the other consumer has more key blocks
                    schedule_sync()
                    schedule_sync()
                    return carry

                if config.schedule_barrier:
                    lax.fori_loop(count, functools.reduce(jnp.maximum, counts), idle_step, 0)
                pl.when(wg == 0)(schedule_sync)

                if tc_sums:
                    row_sum = row_sum.sum(axis=1)
                # an empty selection leaves acc = 0 and row_sum = 0: output 0, lse -inf
                safe_sum = jnp.where(row_sum > 0, row_sum, 1.0)
                if fp8:  # acc is in units of the head's V scale
                    safe_sum = safe_sum / scales_refs[2][bi, hi]
                acc = acc / lax.broadcast_in_dim(safe_sum, acc.shape, [0])
                plgpu.wait_smem_to_gmem(0)  # the last round's stores have read o_smem and lse_smem
                plgpu.commit_smem()  # a barrier: the thread that issued those stores has seen them done
                o_smem[...] = acc.astype(dtype)
                lse_smem[...] = row_max + jnp.log2(row_sum) - weight_exponent
                plgpu.commit_smem()

                def store_raster(o_smem, block):
                    # the chunk's tokens in raster order: ct * ch runs of cw consecutive tokens
                    (_, height, width), (ct, ch, cw) = raster_out
                    per_frame = (height // ch) * (width // cw)
                    t0 = block // per_frame * ct
                    h0 = block % per_frame // (width // cw) * ch
                    w0 = block % (width // cw) * cw
                    for it in range(ct):
                        for ih in range(ch):
                            token = ((t0 + it) * height + h0 + ih) * width + w0
                            plgpu.copy_smem_to_gmem(
                                o_smem.at[pl.ds((it * ch + ih) * cw, cw)], out_ref.at[bi, pl.ds(token, cw), hi]
                            )

                @pl.when(valid(r, wg))
                def _store():
                    block = query_block(r, wg)
                    if raster_out is None:
                        plgpu.copy_smem_to_gmem(o_smem, out_ref.at[bi, pl.ds(block * BLOCK, BLOCK), hi])
                    else:
                        store_raster(o_smem, block)
                    plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[bi, hi, pl.ds(block * BLOCK, BLOCK)])


                return done + count

            lax.fori_loop(0, rounds, consume_round, jnp.int32(0))
            plgpu.wait_smem_to_gmem(0)

        if config.producers == 1:
            @pl.when(wg == consumers)
            def _producer():
                plgpu.set_max_registers(_PRODUCER_REGISTERS[consumers], action="decrease")
                produce(range(consumers))
        else:
            for w in range(consumers):
                @pl.when(wg == consumers + w)
                def _producer():
                    plgpu.set_max_registers(_PRODUCER_REGISTERS[consumers], action="decrease")
                    produce([w])

    def entry(idx_ref, starts_ref, counts_ref, q_ref, k_ref, v_ref, *refs):
        refs = list(refs)
        scales_refs = (refs.pop(0), refs.pop(0), refs.pop(0)) if fp8 else None
        ones_ref = refs.pop(0) if tc_sums else None
        out_ref, lse_ref = refs
        transforms = tile_transforms(operand_dtype, d)
        out_transforms = tile_transforms(dtype, d)
        v_tile = (d, BLOCK) if fp8 else (BLOCK, d)
        scratch = (
            plgpu.SMEM((consumers, BLOCK, d), operand_dtype, transforms=transforms),
            # raster stores copy a few rows at a time: those need the out tiles untiled and unswizzled
            plgpu.SMEM((consumers, BLOCK, d), dtype, transforms=() if raster_out else out_transforms),
            plgpu.SMEM((consumers, k_stages, BLOCK, d), operand_dtype, transforms=transforms),
            plgpu.SMEM((consumers, v_stages, *v_tile), operand_dtype, transforms=tile_transforms(operand_dtype, v_tile[1])),
            plgpu.SMEM((consumers, k_max), jnp.int32),
            plgpu.SMEM((consumers, BLOCK), jnp.float32),
        ) + ((plgpu.SMEM((consumers, ONES_ROWS, BLOCK), operand_dtype,
                                            transforms=tile_transforms(operand_dtype, BLOCK)),) if tc_sums else ())
        barriers = (
            plgpu.Barrier(num_barriers=consumers),
            plgpu.Barrier(num_barriers=consumers),
            plgpu.Barrier(num_barriers=consumers * len(index_chunks)),
            plgpu.Barrier(num_barriers=consumers * k_stages),
            plgpu.Barrier(num_barriers=consumers * v_stages),
            plgpu.Barrier(num_barriers=consumers * k_stages),
            plgpu.Barrier(num_barriers=consumers * v_stages),
            plgpu.Barrier(num_arrivals=consumers),
        ) + ((plgpu.Barrier(num_barriers=consumers),) if tc_sums else ())
        buffers = len(scratch)
        pl.run_scoped(
            lambda *args: kernel(
                idx_ref, starts_ref, counts_ref, q_ref, k_ref, v_ref, scales_refs, ones_ref, out_ref, lse_ref,
                (args[:buffers], args[buffers:]),
            ),
            *scratch,
            *barriers,
            collective_axes="wg",
        )

    return plgpu.kernel(
        entry,
        out_type=(
            jax.ShapeDtypeStruct(q.shape, dtype),  # [B, Sq, H, D]
            jax.ShapeDtypeStruct((b, h, sq), jnp.float32),
        ),
        # Pallas Mosaic GPU launches the last grid axis fastest: the CTAs running together share one head, so
        # its selected K/V blocks stay in L2 (heads fastest missed L2 on 96% of the gathers on an H100)
        grid=(b, h, num_ctas),
        grid_names=("batch", "heads", "ctas"),
        num_threads=consumers + config.producers,
        thread_name="wg",
        # no barriers around each store to shared memory (Pallas' default): the round's out and lse stores synchronise
        # above (FP8 kernel 1.04-1.06x on an H100 while its P tiles went through shared memory, BENCHMARKS.md)
        compiler_params=plgpu.CompilerParams(approx_math=True, unsafe_no_auto_barriers=True),
        **interpret_params(config.interpret),
    )(indices, starts, counts, q, k, v, *(fp8_scales if fp8 else ()), *((_ones_column(operand_dtype),) if tc_sums else ()))


def _ones_column(dtype) -> jax.Array:
    """[8, 64]: the row-sum product's B operand, K-major (row 0 ones, the rest zeros: P times it is P's row sums
    in column 0)."""
    return jnp.zeros((ONES_ROWS, BLOCK), dtype).at[0].set(1)
