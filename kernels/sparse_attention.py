"""The differentiable block-sparse kernel on chunk-ordered tokens: picks the forward kernel, shares one backward.

Forward: the Triton-lowered kernel (`pallas_triton`, any CUDA GPU) or the Mosaic GPU kernel for Hopper
(`pallas_mosaic`), once per key range where one head's K and V outgrow the L2 cache (`key_ranges`). Both
return the output and the base-2 log-sum-exp, so one backward (dq over the selection lists, dk/dv over the
transposed lists; the Triton kernels, or the Mosaic GPU ones of `pallas_mosaic_backward` by `KernelConfig.backward`)
serves either through `jax.custom_vjp`. On key grids padded to whole chunks every kernel masks the padded keys
(`padding.GridPadding`). `KernelConfig(fp8=True)` runs the Mosaic forward on e4m3 operands (`fp8_operands`), for
inference only: it has no backward.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from kernels import (
    fp8_operands,
    key_ranges,
    layout,
    mosaic_config,
    pallas_chunking,
    pallas_mosaic,
    pallas_mosaic_backward,
    pallas_triton,
)
from kernels.errors import BSAConfigError, BSAInputError
from kernels.padding import GridPadding

FORWARD_KERNELS = ("auto", "triton", "mosaic")
BACKWARD_KERNELS = ("auto", "triton", "mosaic")
# `checkpoint_name`s of the forward's output and log-sum-exp, the residuals the backward kernels need besides q, k, v:
# a remat policy that saves these names (`jax.checkpoint_policies.save_only_these_names`) keeps the backward pass
# from running the forward kernel again.
RESIDUAL_NAMES = ("bsa_attention_out", "bsa_attention_lse")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Which forward kernel runs and the launch settings of each.

    forward: "auto" (the default: the Mosaic kernel on a Hopper GPU where it supports the shapes, 1.2-1.6x the
    Triton one on an H100, see BENCHMARKS.md; the Triton kernel elsewhere), "triton" (any CUDA GPU) or "mosaic"
    (refused where it cannot run).
    mosaic: the bf16 Mosaic forward's launch settings, by default with the conditional rescale
    (`MosaicConfig.conditional_rescale`: the same output bit for bit, 1.013-1.029x faster at 84,480 tokens on an H100;
    the FP8 kernel measured 0.96-0.99x with it, so `mosaic_fp8` leaves it off) and one round a CTA
    (`MosaicConfig.rounds`: on an H100 1.01-1.03x two rounds at 168,960 tokens, 1.07x there in one launch with
    `MosaicConfig()`'s other settings, where one head's K and V outgrow the L2 cache and its gathers hit L2 more often
    with one round; 0.99-1.02x at 84,480; BENCHMARKS.md).
    key_ranges: forward launches, each over one range of key blocks (None: for the Triton kernel as many as keep
    one head's K and V per range within the L2 cache, `key_ranges.auto_key_ranges`, 1.1x at 168,960 tokens on an
    H100; for the bf16 Mosaic kernel one, whose CTAs walk their lists from staggered entries where one head's K and V
    outgrow the L2 cache, `key_ranges.auto_phased_walks` (unless `mosaic.phased_walks` is set): at 168,960 tokens
    and top-k 0.875 on an H100 1.04-1.07x the three key ranges with their merge of the rule before, 1.04-1.09x one
    plain launch at 0.9375 and 0.96875; an int here: that many plain launches; for the FP8 one two where a head's
    e4m3 K and V outgrow 32 MiB and the lists are long, `key_ranges.auto_fp8_key_ranges`, 1.04-1.07x at 168,960
    tokens and top-k 0.875 / 0.9375 on an H100).
    backward: "auto" (the default: the Mosaic GPU kernels of `pallas_mosaic_backward` on a Hopper GPU where they
    support the inputs, 1.2x the Triton ones on an H200 and a 720p LoRA training step 16.11 -> 15.63 s, see
    BENCHMARKS.md; the Triton ones elsewhere), "triton" (any CUDA GPU) or "mosaic" (refused where it cannot run).
    fp8: both products of the Mosaic forward in e4m3 (`fp8_operands`: q, k and v with a scale per 64-token block and
    head, the softmax weights rounded to e4m3), on Hopper only, with the launch settings `mosaic_fp8` (by default
    without the schedule barrier, 1.07-1.10x faster than with it on an H200 at 84,480 tokens; with the row sums on the
    tensor cores, each block's from a fresh accumulator, 1.025-1.028x the reduction at top-k 0.875 and 0.9375 there,
    0.995x at 0.96875, with outputs 2e-3 apart; and with three consumer warpgroups of one round each, where the lists
    fit (`mosaic_config.fitted`), 1.04-1.07x two of two rounds on an H200, BENCHMARKS.md); the reference backend
    emulates its roundings. Off by default: its error and speed against bf16 are in BENCHMARKS.md. Inference only:
    differentiating it is refused.
    top_k_row_pieces: the top-k selection kernel holds each row of block scores as power-of-two pieces
    (`pallas_topk.row_pieces`, about a third fewer compares at 2,640 key blocks) rather than one padded array; None
    (default) splits rows longer than 2,048 padded lanes (`pallas_topk.splits_rows`: on an H100 the top-k 1.13-1.14x
    faster as pieces at 2,640 key blocks, 168,960 tokens, 0.94-0.97x at 1,320), True or False forces either form.
    """

    forward: str = "auto"
    triton: pallas_triton.TritonConfig = pallas_triton.TritonConfig()
    mosaic: mosaic_config.MosaicConfig = mosaic_config.MosaicConfig(conditional_rescale=True, rounds=1)
    key_ranges: int | None = None
    backward: str = "auto"
    mosaic_backward: pallas_mosaic_backward.MosaicBackwardConfig = pallas_mosaic_backward.MosaicBackwardConfig()
    fp8: bool = False
    mosaic_fp8: mosaic_config.MosaicConfig = mosaic_config.MosaicConfig(
        schedule_barrier=False, row_sums_on_tensor_cores=True, consumers=3, rounds=1
    )
    top_k_row_pieces: bool | None = None

    def __post_init__(self):
        if self.backward not in BACKWARD_KERNELS:
            raise BSAConfigError(
                f"unknown BSA backward kernel KernelConfig.backward={self.backward!r}; choose one of {BACKWARD_KERNELS}"
            )
        for name, kind in (("triton", pallas_triton.TritonConfig), ("mosaic", mosaic_config.MosaicConfig),
                           ("mosaic_fp8", mosaic_config.MosaicConfig),
                           ("mosaic_backward", pallas_mosaic_backward.MosaicBackwardConfig)):
            if not isinstance(getattr(self, name), kind):
                raise BSAConfigError(
                    f"KernelConfig.{name} must be a kernels.{kind.__name__}, got {type(getattr(self, name)).__name__}"
                )
        if self.forward not in FORWARD_KERNELS:
            raise BSAConfigError(
                f"unknown BSA forward kernel KernelConfig.forward={self.forward!r}; choose one of {FORWARD_KERNELS}"
            )
        if self.key_ranges is not None and (not isinstance(self.key_ranges, int) or self.key_ranges < 1):
            raise BSAConfigError(f"KernelConfig.key_ranges must be None or an int >= 1, got {self.key_ranges!r}")
        if not isinstance(self.fp8, bool):
            raise BSAConfigError(f"KernelConfig.fp8 must be True or False, got {self.fp8!r}")
        if self.top_k_row_pieces is not None and not isinstance(self.top_k_row_pieces, bool):
            raise BSAConfigError(
                f"KernelConfig.top_k_row_pieces must be None (by the row's length), True or False, got "
                f"{self.top_k_row_pieces!r}"
            )
        if self.fp8 and self.forward == "triton":
            raise BSAConfigError("KernelConfig(fp8=True) runs the Mosaic GPU forward; use forward='auto' or 'mosaic'")

    def interpreted(self) -> KernelConfig:
        """The same settings run through the Pallas interpreters on the CPU."""
        return dataclasses.replace(
            self,
            triton=dataclasses.replace(self.triton, interpret=True),
            mosaic=dataclasses.replace(self.mosaic, interpret=True),
            mosaic_fp8=dataclasses.replace(self.mosaic_fp8, interpret=True),
            mosaic_backward=dataclasses.replace(self.mosaic_backward, interpret=True),
        )

    def check_backward(self, q: jax.Array, k: jax.Array, v: jax.Array, block_q: int, block_k: int) -> None:
        """Refuses a "mosaic" backward these inputs or settings cannot run, before any kernel runs."""
        if self.backward == "mosaic":
            pallas_mosaic_backward.check(q, k, v, block_q, block_k, self.mosaic_backward)

    def uses_mosaic_backward(self, q: jax.Array, k: jax.Array, v: jax.Array, block_q: int, block_k: int) -> bool:
        """Whether the Mosaic GPU backward runs for these inputs: "mosaic" always (`check_backward` refused what it
        cannot run), "auto" on a Hopper GPU where the kernels support the inputs and fit shared memory."""
        if self.backward == "auto":
            return (
                pallas_mosaic_backward.supports(q, k, v, block_q, block_k) and not self.mosaic_backward.interpret
                and on_hopper() and pallas_mosaic_backward.fits(q.shape[-1], self.mosaic_backward)
            )
        return self.backward == "mosaic"

    def uses_mosaic(self, q: jax.Array, block_q: int, block_k: int, k_max: int) -> bool:
        """Whether the Mosaic GPU forward runs for these inputs (k_max: list width); refuses "mosaic" where it
        cannot. "auto" also leaves lists too long for its shared memory to the Triton kernel."""
        supported = mosaic_config.supports(q, block_q, block_k)
        if self.fp8:
            self.check_fp8(q, block_q, block_k, k_max)
            return True
        if self.forward == "mosaic" and not supported:
            raise BSAInputError(
                f"the Mosaic GPU BSA forward needs {mosaic_config.BLOCK}-token q and k blocks (4x4x4 chunks), "
                f"head_dim 64 or 128 and bf16/f16 inputs; got blocks {block_q}/{block_k}, head_dim {q.shape[-1]}, "
                f"{q.dtype}; use forward='triton' or 'auto'"
            )
        if self.forward == "auto":
            return (
                supported and not self.mosaic.interpret and on_hopper()
                and mosaic_config.fits(q.shape[-1], k_max, self.mosaic)
            )
        return self.forward == "mosaic"

    def check_fp8(self, q: jax.Array, block_q: int, block_k: int, k_max: int) -> None:
        """Refuses FP8 operands where the Mosaic forward cannot take them (q: the bf16/f16 queries), naming the fix."""
        if not mosaic_config.supports(q, block_q, block_k):
            raise BSAInputError(
                f"KernelConfig(fp8=True) needs {mosaic_config.BLOCK}-token q and k blocks (4x4x4 chunks), head_dim 64 "
                f"or 128 and bf16/f16 inputs; got blocks {block_q}/{block_k}, head_dim {q.shape[-1]}, {q.dtype}; "
                "use fp8=False"
            )
        if not self.mosaic_fp8.interpret and not on_hopper():
            raise BSAInputError(
                f"KernelConfig(fp8=True) needs a Hopper GPU (compute capability 9.x), the default device is "
                f"{jax.devices()[0].device_kind}; use fp8=False (bf16 kernels) there"
            )
        if not mosaic_config.fits(q.shape[-1], k_max, self.mosaic_fp8, fp8=True):
            raise BSAConfigError(
                f"FP8 index lists of {k_max} key blocks do not fit the Mosaic kernel's shared memory with "
                f"k_stages={self.mosaic_fp8.k_stages}, v_stages={self.mosaic_fp8.v_stages}; lower them in "
                "KernelConfig.mosaic_fp8 or use fp8=False"
            )


def on_hopper() -> bool:
    """Whether the default device is a Hopper GPU (compute capability 9.x), where the Mosaic kernel runs."""
    device = jax.devices()[0]
    return device.platform == "gpu" and str(getattr(device, "compute_capability", "")).startswith("9.")


def sparse_attention_with_lse(
    q, k, v, indices, counts, block_q, block_k, config: KernelConfig, raster=None, key_padding: GridPadding | None = None,
    ascending: bool = False,
):
    """(out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] float32 base 2) from the kernel `config` picks.

    raster: None (out in chunk order, like q) or (latent_shape, chunk_shape) of q: out in raster order (the
    Mosaic kernel writes it so directly; otherwise it is reordered here). lse stays in chunk order.
    key_padding: None, or the padding of k's grid (k holds the padded grid in chunk order): padded keys get no weight.
    ascending: each list's first `counts` entries are ascending (the selection's lists), which spares the key ranges'
    sort.
    """
    mosaic = config.uses_mosaic(q, block_q, block_k, indices.shape[-1])
    if config.fp8:
        operands = fp8_operands.quantize_operands(q, k, v, block_q, block_k)
        return fp8_sparse_attention_with_lse(operands, indices, counts, config, raster, key_padding, q.dtype, ascending)
    num_k_blocks = k.shape[1] // block_k
    ranges, launch = config.key_ranges, config.mosaic
    if mosaic and ranges is None:  # one launch, its walks phased where a head's K and V outgrow the L2
        ranges = 1
        if not launch.phased_walks:
            phases = key_ranges.auto_phased_walks(k.shape[1], k.shape[-1], k.dtype.itemsize)
            launch = dataclasses.replace(launch, phased_walks=phases)
    elif ranges is None:
        ranges = key_ranges.auto_key_ranges(k.shape[1], k.shape[-1], k.dtype.itemsize)
    ranges = min(ranges, num_k_blocks)
    if mosaic and ranges == 1:
        return pallas_mosaic.mosaic_forward(
            q, k, v, indices, jnp.zeros_like(counts), counts, launch, raster_out=raster, key_padding=key_padding
        )

    def prepare(indices):
        def forward(starts, counts):
            if mosaic:
                return pallas_mosaic.mosaic_forward(
                    q, k, v, indices, starts, counts, config.mosaic, key_padding=key_padding
                )
            return pallas_triton.triton_forward(
                q, k, v, indices, starts, counts, block_q, block_k, config.triton, key_padding
            )
        return forward

    return _over_key_ranges(prepare, indices, counts, num_k_blocks, ranges, raster, ascending)


def _over_key_ranges(prepare, indices, counts, num_k_blocks: int, ranges: int, raster, ascending: bool = False):
    """(out, lse) of a forward run once per key range and merged by log-sum-exp, out then in raster order if `raster`.

    prepare(lists) -> forward(starts, counts) -> (out, lse) in chunk order: called once, with the lists sorted by key
    block where there are several ranges, so that what depends only on the lists (the FP8 entries' scales) is
    gathered once for all ranges. ascending: the lists are sorted already (`key_ranges.split_by_key_range`).
    """
    if ranges == 1:
        out, lse = prepare(indices)(jnp.zeros_like(counts), counts)
    else:
        indices, starts, range_counts = key_ranges.split_by_key_range(indices, counts, num_k_blocks, ranges,
                                                                      ascending=ascending)
        forward = prepare(indices)
        parts = [forward(starts[r], range_counts[r]) for r in range(ranges)]
        out, lse = key_ranges.merge_partial_attention([o for o, _ in parts], [lse for _, lse in parts])
    if raster is not None:
        out = layout.from_chunk_order(out, *raster)
    return out, lse


def fp8_sparse_attention_with_lse(
    operands: fp8_operands.Fp8Operands, indices, counts, config: KernelConfig, raster=None,
    key_padding: GridPadding | None = None, out_dtype=jnp.bfloat16, ascending: bool = False,
):
    """(out [B, Sq, H, D] in out_dtype, lse [B, H, Sq] float32 base 2) of the Mosaic forward on e4m3 operands, with
    `config.mosaic_fp8`, once per key range (`config.key_ranges`; None: `key_ranges.auto_fp8_key_ranges`); the other
    arguments as in `sparse_attention_with_lse` (`KernelConfig.check_fp8` first). ascending: each list's first
    `counts` entries are ascending (the selection's lists), which spares the key ranges' sort."""
    counts, indices = counts.astype(jnp.int32), indices.astype(jnp.int32)
    num_k_tokens, head_dim = operands.k.shape[1], operands.k.shape[-1]
    ranges = config.key_ranges
    if ranges is None:
        ranges = key_ranges.auto_fp8_key_ranges(num_k_tokens, head_dim, indices.shape[-1])
    num_k_blocks = num_k_tokens // mosaic_config.BLOCK
    ranges = min(ranges, num_k_blocks)

    def prepare(indices, raster_out=None):
        scales = operands.kernel_scales(indices)

        def forward(starts, counts):
            return pallas_mosaic.mosaic_forward(
                operands.q, operands.k, operands.v_t, indices, starts, counts, config.mosaic_fp8,
                raster_out=raster_out, key_padding=key_padding, fp8_scales=scales, out_dtype=out_dtype,
            )
        return forward

    if ranges == 1:  # the kernel writes out in raster order itself
        return prepare(indices, raster)(jnp.zeros_like(counts), counts)
    return _over_key_ranges(prepare, indices, counts, num_k_blocks, ranges, raster, ascending)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9, 10))
def sparse_attention(
    q, k, v, indices, counts, block_q, block_k, config: KernelConfig, raster=None, key_padding=None, ascending=False
):
    """Block-sparse attention of chunk-ordered q [B, Sq, H, D] over k, v [B, Sk, H, D] (differentiable).

    indices [B, H, Mq, K_max] int32 key blocks per query block (entries past counts ignored), counts
    [B, H, Mq] int32; block_q / block_k tokens per block. Scale 1/sqrt(D). raster: None (out in chunk
    order) or q's (latent_shape, chunk_shape), for out in raster order. key_padding: None, or the
    `GridPadding` of k's grid (k, v hold the padded grid): padded keys get no weight, forward and backward.
    ascending: the lists' first `counts` entries are ascending (`sparse_attention_with_lse`).
    """
    out, _ = sparse_attention_with_lse(
        q, k, v, indices, counts, block_q, block_k, config, raster, key_padding, ascending
    )
    return out


def _sparse_attention_fwd(q, k, v, indices, counts, block_q, block_k, config, raster, key_padding, ascending):
    if config.fp8:
        raise BSAConfigError(fp8_operands.NO_GRADIENT)
    config.check_backward(q, k, v, block_q, block_k)
    out, lse = sparse_attention_with_lse(
        q, k, v, indices, counts, block_q, block_k, config, raster, key_padding, ascending
    )
    # named (same values) so that a remat policy can keep them; the primal output is the named one too, so the layers
    # after the attention read the kept tensor rather than a recomputed one
    out, lse = checkpoint_name(out, RESIDUAL_NAMES[0]), checkpoint_name(lse, RESIDUAL_NAMES[1])
    return out, (q, k, v, indices, counts, out, lse)


def backward_delta(out: jax.Array, do: jax.Array) -> jax.Array:
    """delta = rowsum(out * do) [B, H, S] float32 of out, do [B, S, H, D]: the softmax's share of each row's
    gradient, which both backward kernels read."""
    return jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1).transpose(0, 2, 1)


def sparse_attention_backward(
    q, k, v, indices, counts, out, lse, do, block_q, block_k, config: KernelConfig, key_padding: GridPadding | None = None
):
    """(dq, dk, dv) from the backward kernels `config.backward` picks, all arrays in chunk order (q, out, do
    [B, Sq, H, D], k, v [B, Sk, H, D], lse [B, H, Sq] from the forward); `KernelConfig.check_backward` refuses
    beforehand what the Mosaic ones cannot run."""
    mosaic = config.uses_mosaic_backward(q, k, v, block_q, block_k)
    return _backward_kernels(q, k, v, indices, counts, backward_delta(out, do), lse, do, block_q, block_k, config,
                             key_padding, mosaic)


def _backward_kernels(q, k, v, indices, counts, delta, lse, do, block_q, block_k, config: KernelConfig, key_padding,
                      mosaic: bool):
    """`sparse_attention_backward` given delta [B, H, Sq] (`backward_delta`) rather than the output; mosaic: whether
    the Mosaic GPU kernels run (`KernelConfig.uses_mosaic_backward`), else the Triton ones."""
    if mosaic:
        return pallas_mosaic_backward.mosaic_backward(
            q, k, v, indices, counts, delta, lse, do, config.mosaic_backward, key_padding
        )
    return pallas_triton.triton_backward(
        q, k, v, indices, counts, delta, lse, do, block_q, block_k, config.triton, key_padding
    )


def _sparse_attention_bwd(block_q, block_k, config, raster, key_padding, ascending, residuals, do):
    q, k, v, indices, counts, out, lse = residuals
    mosaic = config.uses_mosaic_backward(q, k, v, block_q, block_k)
    if raster is None:
        delta = backward_delta(out, do)
    else:  # the backward kernels work in chunk order: do reordered and delta taken in one pass, out never reordered
        interpret = (config.mosaic_backward if mosaic else config.triton).interpret  # as the backward kernels
        do, delta = pallas_chunking.chunk_with_delta(do, out, *raster, q.dtype, interpret=interpret)
    dq, dk, dv = _backward_kernels(q, k, v, indices, counts, delta, lse, do, block_q, block_k, config, key_padding,
                                   mosaic)
    return dq, dk, dv, None, None


sparse_attention.defvjp(_sparse_attention_fwd, _sparse_attention_bwd)
