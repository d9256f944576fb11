"""Block-sparse attention backward as Pallas Mosaic GPU kernels for Hopper (wgmma + TMA, warp-specialised).

Why: the Triton-lowered backward (`pallas_triton.triton_backward`) runs one warpgroup per block with no warp
specialisation, so each gathered block's load latency and the elementwise work between its four products sit on
the critical path. Here, as in the Mosaic forward (`pallas_mosaic`), each CTA holds two consumer warpgroups, each
on its own 64-token block, and a producer warpgroup that gathers the blocks on their lists into shared memory by
TMA, `MosaicBackwardConfig.stages` steps ahead. Two kernels, as in the Triton backward:

- dq, per query block over its selected key blocks: p = exp2(q k^T * scale * log2(e) - lse), dp = do v^T,
  ds = p * (dp - delta), dq += ds k;
- dk/dv, per key block over the query blocks that selected it (the transposed lists, `transpose_selection`):
  p^T and dp^T as above on the transposed tile, dv += p^T do, dk += ds^T q;

with lse the forward's base-2 log-sum-exp and delta = rowsum(out * do). Two kernels run 7 products a selected pair
where FlashAttention-3's fused backward runs 5 (its dk/dv loop adds each pair's ds k into a float32 dq in global
memory). With 64-token key blocks that is a [64, D] float32 tile a pair, 113 GB at 84,480 tokens and top-k 0.9375,
and float32 TMA reduce-add ran at 1.33-1.49 TB/s on an H100 (`benchmarks/tma_reduce_add.py`, BENCHMARKS.md): about
76 ms of adds against 41-43 ms for the whole of these two kernels, so the fused form cannot pay here.
Each consumer loads its own block (q, do, lse, delta or k, v) once; the producer reads each list entry from global
memory and gathers that block's tiles (and, for dk/dv, its lse and delta rows). On a key grid padded to whole
chunks, padded keys get logit -inf (`padding.mask_padded_keys`), so they take no weight and get zero dk and dv. Only
64-token blocks, head_dim 64 or 128, bf16/f16 (`supports`); shared memory bounds the stages (`fits`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from kernels import mosaic_config
from kernels.errors import BSAConfigError, BSAInputError
from kernels.mosaic_common import BLOCK, LOG2E, SMEM_ALIGN, SMEM_BYTES, aligned, dot_f32, interpret_params, load_whole
from kernels.padding import GridPadding, mask_padded_keys
from kernels.selection import transpose_selection

_CONSUMERS = 2  # consumer warpgroups (blocks) per CTA


@dataclasses.dataclass(frozen=True)
class MosaicBackwardConfig:
    """Launch settings of the Hopper backward kernels.

    stages: gathered blocks in flight per consumer (2 fits head_dim 128 in shared memory, more fit head_dim 64);
    longest_first: hand the blocks to the CTAs in order of falling list length (per batch and head) rather than in
    block order, so that a CTA's two consumers get lists of about the same length and the longest lists start first.
    The transposed lists of the dk/dv kernel are uneven under top-k (21 to 188 query blocks against a mean of 82
    at 84,480 tokens and 0.9375, random inputs), and a CTA lasts as long as its longer list;
    deferred_accumulate: issue each step's accumulating product (dq += ds k, dk += ds^T q) without waiting for it,
    and release that step's gathered tiles only after the next step's first product has been waited for: the
    accumulating product then runs on the tensor cores behind the next step's first one instead of ending the step
    with a wait. False waits for it at the end of each step (the earlier schedule);
    one_gather_barrier: the producer's gathers of one list entry (q, do, lse and delta rows; or k and v) all arrive
    on one barrier, which the consumer waits for once a step, rather than one barrier per gathered buffer (0.6-1.3%
    faster on an H200, BENCHMARKS.md);
    interpret: run through the Mosaic GPU interpreter on the CPU (tests). The interpreter has no wgmma on a
    transposed operand, no in-place accumulator and no register layouts, so there the products are plain dots;
    the pipeline, barriers, gathers and the elementwise work are the GPU's.
    """

    stages: int = 2
    longest_first: bool = True
    deferred_accumulate: bool = True
    one_gather_barrier: bool = True
    interpret: bool = False

    def __post_init__(self):
        if not isinstance(self.stages, int) or self.stages < 2:
            raise BSAConfigError(f"MosaicBackwardConfig.stages must be an int >= 2, got {self.stages!r}")
        for name in ("longest_first", "deferred_accumulate", "one_gather_barrier"):
            if not isinstance(getattr(self, name), bool):
                raise BSAConfigError(f"MosaicBackwardConfig.{name} must be True or False, got {getattr(self, name)!r}")


def smem_bytes(head_dim: int, config: MosaicBackwardConfig) -> int:
    """Shared memory the larger of the two kernels (dk/dv) asks for: own k and v tiles, staged q and do tiles,
    staged lse and delta rows (barriers and what Mosaic GPU reserves, 3 KiB, included)."""
    tile = BLOCK * head_dim * 2
    buffers = (
        _CONSUMERS * tile,  # k (dq kernel: q)
        _CONSUMERS * tile,  # v (dq kernel: do)
        _CONSUMERS * config.stages * tile,  # q (dq kernel: k)
        _CONSUMERS * config.stages * tile,  # do (dq kernel: v)
        _CONSUMERS * config.stages * BLOCK * 4,  # lse (dq kernel: one row per consumer)
        _CONSUMERS * config.stages * BLOCK * 4,  # delta
    )
    return sum(aligned(n, SMEM_ALIGN) for n in buffers) + 3 * SMEM_ALIGN


def fits(head_dim: int, config: MosaicBackwardConfig) -> bool:
    """Whether a CTA's shared memory holds both kernels with these stages."""
    return smem_bytes(head_dim, config) <= SMEM_BYTES


def supports(q: jax.Array, k: jax.Array, v: jax.Array, block_q: int, block_k: int) -> bool:
    """Whether these kernels can run on these inputs: 64-token q and k blocks, head_dim 64 or 128, q, k, v all
    bf16 or all f16."""
    return mosaic_config.supports(q, block_q, block_k) and k.dtype == v.dtype == q.dtype


def check(q: jax.Array, k: jax.Array, v: jax.Array, block_q: int, block_k: int, config: MosaicBackwardConfig) -> None:
    """Refuses inputs or settings these kernels cannot run, naming the fix."""
    if not supports(q, k, v, block_q, block_k):
        raise BSAInputError(
            f"the Mosaic GPU BSA backward needs {BLOCK}-token q and k blocks (4x4x4 chunks), head_dim 64 or 128 and "
            f"q, k, v all bf16 or all f16; got {block_q=}, {block_k=}, head_dim={q.shape[-1]}, "
            f"dtypes {q.dtype}/{k.dtype}/{v.dtype}; use KernelConfig(backward='triton')"
        )
    if not fits(q.shape[-1], config):
        raise BSAConfigError(
            f"the Mosaic BSA backward needs {smem_bytes(q.shape[-1], config)} bytes of shared memory with "
            f"MosaicBackwardConfig.stages={config.stages} and head_dim={q.shape[-1]}; a Hopper CTA has {SMEM_BYTES}: "
            "lower MosaicBackwardConfig.stages (2 fits head_dim 128) or use KernelConfig(backward='triton')"
        )


class _Kernel:
    """What differs between the dq and the dk/dv kernel, given the launch settings.

    own: [(input index, "tile" | "rows")] each consumer loads once for its block; gathered: the same for what
    the producer gathers per list entry; keys_are_own: whether the consumer's own block is the key block (dk/dv)
    rather than the list's entries (dq); `init`, `step` and `finish` are the consumer's work. `step` returns the
    carry and the operands of its accumulating product (dq += ds k or dk += ds^T q: a [64, 64] tile in registers,
    a [64, D] tile in shared memory), which `_launch` issues, waited for or deferred; it calls `after_first_wait`
    once its first product has been waited for. `finish` gets that product's [64, D] float32 sum.
    """

    own: tuple[tuple[int, str], ...]
    gathered: tuple[tuple[int, str], ...]
    keys_are_own: bool

    def __init__(self, head_dim, dtype, config, key_padding):
        self.d, self.dtype, self.interpret, self.key_padding = head_dim, dtype, config.interpret, key_padding
        self.scale = head_dim**-0.5
        self.logit_scale = self.scale * LOG2E  # logits in base-2 units

    def fragment(self, x, layout):
        return x if self.interpret else plgpu.layout_cast(x, layout)

    def zeros(self, shape):
        return self.fragment(jnp.full(shape, 0, jnp.float32), plgpu.Layout.WGMMA)

    def load_rows(self, ref, reduced_axis):
        """[64] float32 rows from shared memory, laid out to broadcast along `reduced_axis` of a wgmma tile."""
        if self.interpret:
            return ref[...]
        return load_whole(ref, plgpu.Layout.WGMMA.reduce(reduced_axis))

    def accumulate(self, acc, a, b_smem):
        """acc + a @ b in float32: acc [64, D] wgmma accumulator, a [64, 64] in registers, b_smem [64, D] in shared memory."""
        if self.interpret:
            return acc + dot_f32(a, b_smem[...])

        def product(acc_ref):
            plgpu.wgmma(acc_ref, a, b_smem)

        return pl.run_state(product)(plgpu.ACC.init(acc))

    def positions(self, dimension):
        """[64, 64] int32: each logit's token position inside its key block (along `dimension`)."""
        if self.interpret:
            return lax.broadcasted_iota(jnp.int32, (BLOCK, BLOCK), dimension)
        return plgpu.broadcasted_iota(jnp.int32, (BLOCK, BLOCK), dimension, layout=plgpu.Layout.WGMMA)


class _DqKernel(_Kernel):
    # inputs: q, do, lse, delta (own), k, v (gathered); output: dq
    own = ((0, "tile"), (1, "tile"), (2, "rows"), (3, "rows"))
    gathered = ((4, "tile"), (5, "tile"))
    keys_are_own = False

    def init(self, own):
        _, _, lse_smem, delta_smem = own
        return self.load_rows(lse_smem, 1), self.load_rows(delta_smem, 1)

    def step(self, carry, own, gathered, key_block, after_first_wait):
        lse, delta = carry
        q_smem, do_smem = own[:2]
        k_smem, v_smem = gathered
        if self.interpret:
            logits = dot_f32(q_smem[...], k_smem[...], transpose_b=True)  # [cq, ck]
            dprobs = dot_f32(do_smem[...], v_smem[...], transpose_b=True)
        else:
            def products(refs):  # both in one wgmma group: one wait
                logits_ref, dprobs_ref = refs
                plgpu.wgmma(logits_ref, q_smem, k_smem.transpose((1, 0)))
                plgpu.wgmma(dprobs_ref, do_smem, v_smem.transpose((1, 0)))

            zeros = self.zeros((BLOCK, BLOCK))
            logits, dprobs = pl.run_state(products)((plgpu.ACC.init(zeros), plgpu.ACC.init(zeros)))
        after_first_wait()
        if self.key_padding is not None:
            logits = mask_padded_keys(logits, self.key_padding, key_block, self.positions(1))
        probs = jnp.exp2(logits * self.logit_scale - lax.broadcast_in_dim(lse, logits.shape, [0]))
        dlogits = (probs * (dprobs - lax.broadcast_in_dim(delta, logits.shape, [0]))).astype(self.dtype)
        return carry, (dlogits, k_smem)  # dq += dlogits k

    def finish(self, acc, carry, own):
        """Writes dq into the q tile (free once the last product is done); returns the tiles to store."""
        q_smem = own[0]
        q_smem[...] = (acc * self.scale).astype(self.dtype)
        return (q_smem,)


class _DkDvKernel(_Kernel):
    # inputs: k, v (own), q, do, lse, delta (gathered); outputs: dk, dv
    own = ((0, "tile"), (1, "tile"))
    gathered = ((2, "tile"), (3, "tile"), (4, "rows"), (5, "rows"))
    keys_are_own = True

    def init(self, own):
        return (self.zeros((BLOCK, self.d)),)  # dv

    def step(self, carry, own, gathered, key_block, after_first_wait):
        (dv,) = carry
        k_smem, v_smem = own
        q_smem, do_smem, lse_smem, delta_smem = gathered
        lse = self.load_rows(lse_smem, 0)
        delta = self.load_rows(delta_smem, 0)
        if self.interpret:
            logits_t = dot_f32(k_smem[...], q_smem[...], transpose_b=True)  # [ck, cq]
        else:
            def logits_scope(acc_ref):
                plgpu.wgmma(acc_ref, k_smem, q_smem.transpose((1, 0)))
                return acc_ref[...]

            logits_t = pl.run_scoped(logits_scope, plgpu.ACC((BLOCK, BLOCK), jnp.float32))
        after_first_wait()
        if self.key_padding is not None:
            logits_t = mask_padded_keys(logits_t, self.key_padding, key_block, self.positions(0))
        probs_t = jnp.exp2(logits_t * self.logit_scale - lax.broadcast_in_dim(lse, logits_t.shape, [1]))
        probs_t_low = probs_t.astype(self.dtype)
        if self.interpret:
            dv = dv + dot_f32(probs_t_low, do_smem[...])
            dprobs_t = dot_f32(v_smem[...], do_smem[...], transpose_b=True)
        else:
            def products(refs):  # both in one wgmma group: one wait
                dv_ref, dprobs_ref = refs
                plgpu.wgmma(dv_ref, probs_t_low, do_smem)
                plgpu.wgmma(dprobs_ref, v_smem, do_smem.transpose((1, 0)))

            dv, dprobs_t = pl.run_state(products)((plgpu.ACC.init(dv), plgpu.ACC.init(self.zeros((BLOCK, BLOCK)))))
        dlogits_t = (probs_t * (dprobs_t - lax.broadcast_in_dim(delta, logits_t.shape, [1]))).astype(self.dtype)
        return (dv,), (dlogits_t, q_smem)  # dk += dlogits_t q

    def finish(self, acc, carry, own):
        """Writes dk and dv into the k and v tiles (free once the last product is done)."""
        k_smem, v_smem = own
        k_smem[...] = (acc * self.scale).astype(self.dtype)
        v_smem[...] = carry[0].astype(self.dtype)
        return k_smem, v_smem


def _launch(spec: _Kernel, indices, counts, inputs, out_type, config: MosaicBackwardConfig):
    """Runs one backward kernel: per (batch, head) CTAs of `_CONSUMERS` blocks, each visiting its list's entries.

    indices [B, H, M, W] int32 (entries past counts ignored), counts [B, H, M] int32, for the M blocks the
    consumers own; inputs: the global arrays `spec.own` and `spec.gathered` refer to; out_type: the outputs, one
    [B, M*64, H, D] tile array per tile `spec.finish` returns.
    """
    b, h, m, _ = indices.shape
    stages = config.stages
    dtype, d = spec.dtype, spec.d
    num_ctas = -(-m // _CONSUMERS)
    n_own, n_gathered = len(spec.own), len(spec.gathered)
    # [B, H, M] int32: the block at each CTA position (the consumers of CTA c take positions 2c and 2c + 1)
    if config.longest_first:
        order = jnp.argsort(-counts, axis=-1, stable=True).astype(jnp.int32)
    else:
        order = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), counts.shape)

    def tile_or_rows(ref, kind, bi, hi, block):
        rows = pl.ds(block * BLOCK, BLOCK)
        return ref.at[bi, rows, hi] if kind == "tile" else ref.at[bi, hi, rows]

    def kernel(idx_ref, counts_ref, order_ref, in_refs, out_refs, own_smem2, gathered_smem2, barriers):
        own_loaded, consumed, *loaded = barriers  # loaded: one barrier group per gathered buffer (32 at most each)
        if config.one_gather_barrier:
            loaded = loaded * n_gathered  # every gathered buffer arrives on the one group
        bi = lax.axis_index("batch")
        hi = lax.axis_index("heads")
        cta = lax.axis_index("ctas")
        wg = lax.axis_index("wg")

        def block_of(w):
            """Consumer w's block (its position clamped; `valid` says whether it exists)."""
            return order_ref[bi, hi, jnp.minimum(cta * _CONSUMERS + w, m - 1)]

        def valid(w):
            return cta * _CONSUMERS + w < m

        def count_of(w):
            return jnp.where(valid(w), counts_ref[bi, hi, block_of(w)], 0)

        @pl.when(wg < _CONSUMERS)
        def _consumer():
            plgpu.set_max_registers(232, action="increase")
            own_block = block_of(wg)
            own = [smem.at[wg] for smem in own_smem2]
            for i, ((ref, kind), smem) in enumerate(zip(spec.own, own, strict=True)):
                plgpu.copy_gmem_to_smem(
                    tile_or_rows(in_refs[ref], kind, bi, hi, own_block), smem, own_loaded.at[wg * n_own + i]
                )
            for i in range(n_own):
                plgpu.barrier_wait(own_loaded.at[wg * n_own + i])

            count = count_of(wg)
            deferred = config.deferred_accumulate

            def release(j):
                plgpu.barrier_arrive(consumed.at[wg * stages + lax.rem(j, jnp.int32(stages))])

            def visit(j, state, acc_ref=None):
                acc, carry = state
                slot = lax.rem(j, jnp.int32(stages))
                for group in loaded[:1] if config.one_gather_barrier else loaded:
                    plgpu.barrier_wait(group.at[wg * stages + slot])
                if spec.key_padding is None:
                    key_block = None
                elif spec.keys_are_own:
                    key_block = own_block
                else:
                    key_block = idx_ref[bi, hi, own_block, j]
                gathered = [smem.at[wg, slot] for smem in gathered_smem2]

                def after_first_wait():
                    # deferred: entry j - 1's accumulating product ended with this step's first wait
                    if deferred:
                        pl.when(j > 0)(lambda: release(j - 1))

                carry, (a, b_smem) = spec.step(carry, own, gathered, key_block, after_first_wait)
                if acc_ref is not None:
                    plgpu.wgmma(acc_ref, a, b_smem)  # waited for by the next step's first product
                else:
                    acc = spec.accumulate(acc, a, b_smem)
                if not deferred:
                    release(j)
                return acc, carry

            if deferred and not config.interpret:
                def accumulate_in_scope(acc_ref):  # [64, D] float32 wgmma accumulator, zero at first
                    _, carry = lax.fori_loop(0, count, functools.partial(visit, acc_ref=acc_ref), (None, spec.init(own)))
                    return acc_ref[...], carry

                acc, carry = pl.run_scoped(accumulate_in_scope, plgpu.ACC((BLOCK, spec.d), jnp.float32))
            else:
                acc, carry = lax.fori_loop(0, count, visit, (spec.zeros((BLOCK, spec.d)), spec.init(own)))
            if deferred:
                pl.when(count > 0)(lambda: release(count - 1))
            tiles = spec.finish(acc, carry, own)
            plgpu.commit_smem()

            @pl.when(valid(wg))
            def _store():
                for tile, out_ref in zip(tiles, out_refs, strict=True):
                    plgpu.copy_smem_to_gmem(tile, out_ref.at[bi, pl.ds(own_block * BLOCK, BLOCK), hi])

            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == _CONSUMERS)
        def _producer():
            plgpu.set_max_registers(40, action="decrease")
            counts = [count_of(w) for w in range(_CONSUMERS)]

            @pl.loop(0, functools.reduce(jnp.maximum, counts))
            def _gather(step):
                slot = lax.rem(step, jnp.int32(stages))
                for w in range(_CONSUMERS):
                    @pl.when(step < counts[w])
                    def _fetch(w=w):
                        barrier = w * stages + slot
                        block = idx_ref[bi, hi, block_of(w), step]
                        pl.when(step >= stages)(lambda: plgpu.barrier_wait(consumed.at[barrier]))
                        for i, ((ref, kind), smem) in enumerate(zip(spec.gathered, gathered_smem2, strict=True)):
                            plgpu.copy_gmem_to_smem(
                                tile_or_rows(in_refs[ref], kind, bi, hi, block), smem.at[w, slot],
                                loaded[i].at[barrier],
                            )

            for w in range(_CONSUMERS):
                # wait out the last releases, so every barrier phase is observed before the CTA ends
                @pl.loop(jnp.maximum(counts[w] - stages, 0), counts[w])
                def _drain(step, w=w):
                    plgpu.barrier_wait(consumed.at[w * stages + lax.rem(step, jnp.int32(stages))])

    def bsa_mosaic_backward(idx_ref, counts_ref, order_ref, *refs):  # the kernel's name in programs and profiles
        in_refs, out_refs = refs[:len(inputs)], refs[len(inputs):]
        transforms = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))

        def smem(kind, *lead):
            if kind == "tile":
                return plgpu.SMEM((*lead, BLOCK, d), dtype, transforms=transforms)
            return plgpu.SMEM((*lead, BLOCK), jnp.float32)

        scratch = (
            *(smem(kind, _CONSUMERS) for _, kind in spec.own),
            *(smem(kind, _CONSUMERS, stages) for _, kind in spec.gathered),
        )
        barriers = (
            plgpu.Barrier(num_barriers=_CONSUMERS * n_own),
            plgpu.Barrier(num_barriers=_CONSUMERS * stages),
            *((plgpu.Barrier(num_arrivals=n_gathered, num_barriers=_CONSUMERS * stages),)
              if config.one_gather_barrier else
              (plgpu.Barrier(num_barriers=_CONSUMERS * stages) for _ in spec.gathered)),
        )
        pl.run_scoped(
            lambda *args: kernel(
                idx_ref, counts_ref, order_ref, in_refs, out_refs, args[:n_own], args[n_own:n_own + n_gathered],
                args[n_own + n_gathered:],
            ),
            *scratch,
            *barriers,
            collective_axes="wg",
        )

    return plgpu.kernel(
        bsa_mosaic_backward,
        out_type=out_type,
        # the last grid axis runs fastest: the CTAs running together share one head, whose blocks stay in L2
        grid=(b, h, num_ctas),
        grid_names=("batch", "heads", "ctas"),
        num_threads=_CONSUMERS + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        **interpret_params(config.interpret),
    )(indices, counts, order, *inputs)


def mosaic_backward(
    q, k, v, indices, counts, delta, lse, do, config: MosaicBackwardConfig, key_padding: GridPadding | None = None
):
    """Backward kernels: (dq, dk, dv) in the dtypes of q, k, v.

    q, do [B, Sq, H, D], k, v [B, Sk, H, D] chunk-ordered with 64-token blocks; indices [B, H, Mq, K_max]
    int32, counts [B, H, Mq] int32 (entries past counts ignored); delta [B, H, Sq] float32 = rowsum(out * do)
    (`sparse_attention.backward_delta`); lse [B, H, Sq] float32 base 2 from the forward. key_padding: None, or the
    padding of k's grid (k then holds the padded grid): padded keys get no weight. The caller checks `supports` and
    `fits`.
    """
    b, sq, h, d = q.shape
    mk = k.shape[1] // BLOCK
    do = do.astype(q.dtype)
    dq = _launch(
        _DqKernel(d, q.dtype, config, key_padding), indices, counts, (q, do, lse, delta, k, v),
        (jax.ShapeDtypeStruct(q.shape, q.dtype),), config,
    )[0]
    k_indices, k_counts = transpose_selection(indices, counts, mk)  # [B, H, Mk, Mq], [B, H, Mk]
    dk, dv = _launch(
        _DkDvKernel(d, q.dtype, config, key_padding), k_indices, k_counts, (k, v, q, do, lse, delta),
        (jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)), config,
    )
    return dq, dk, dv
