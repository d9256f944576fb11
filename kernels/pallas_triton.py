"""Block-sparse attention as Pallas kernels with the Triton lowering (any CUDA GPU; interpret mode on CPU).

Forward: one program per (query block, batch, head); it loops over that query block's selected key
blocks only (the index list is read inside the kernel), with an online softmax in float32 and base-2
exponentials, and writes the output and the log-sum-exp (base 2) kept for the backward pass.
Backward: a dq kernel over the same lists, and a dk/dv kernel per key block over the transposed lists
(the query blocks that selected that key block); `sparse_attention` ties them together with `jax.custom_vjp`.
On a key grid padded to whole chunks (`padding.GridPadding`) every kernel gives the padded keys logit -inf.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.padding import GridPadding, mask_padded_keys
from kernels.selection import transpose_selection

_LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class TritonConfig:
    """Launch settings of the kernels; `interpret` runs them on the CPU through the Pallas interpreter."""

    num_warps: int = 4
    num_stages: int = 2
    bwd_num_warps: int = 4
    bwd_num_stages: int = 2
    interpret: bool = False


def _dot(a: jax.Array, b: jax.Array, *, transpose_a: bool = False, transpose_b: bool = False) -> jax.Array:
    """a @ b with optional transposes, accumulated in float32."""
    dims = (((0 if transpose_a else 1,), (1 if transpose_b else 0,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _forward_kernel(
    indices_ref, starts_ref, counts_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, block_k, scale, key_padding
):
    # indices_ref [K_max], starts_ref / counts_ref [Mq], q_ref [cq, D], k_ref / v_ref [Sk, D], o_ref [cq, D],
    # lse_ref [cq]; this query block visits list entries [start, start + count). Every key block holds a real
    # key, so row_max is finite after the first visit even where padded keys are masked.
    first = starts_ref[pl.program_id(0)]
    count = counts_ref[pl.program_id(0)]
    q = q_ref[...]
    block_q, head_dim = q.shape
    logit_scale = scale * _LOG2E  # logits in base-2 units
    positions = None if key_padding is None else jnp.arange(block_k, dtype=jnp.int32)[None, :]  # [1, ck]

    def visit_key_block(j, carry):
        acc, row_max, row_sum = carry
        block = indices_ref[first + j]
        start = pl.multiple_of(block * block_k, block_k)
        k = k_ref[pl.ds(start, block_k), :]  # [ck, D]
        logits = mask_padded_keys(_dot(q, k, transpose_b=True) * logit_scale, key_padding, block, positions)  # [cq, ck]
        new_max = jnp.maximum(row_max, jnp.max(logits, axis=1))
        weights = jnp.exp2(logits - new_max[:, None])
        correction = jnp.exp2(row_max - new_max)
        v = v_ref[pl.ds(start, block_k), :]
        acc = acc * correction[:, None] + _dot(weights.astype(v.dtype), v)
        return acc, new_max, row_sum * correction + jnp.sum(weights, axis=1)

    init = (
        jnp.zeros((block_q, head_dim), jnp.float32),
        jnp.full((block_q,), -jnp.inf, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
    )
    acc, row_max, row_sum = jax.lax.fori_loop(0, count, visit_key_block, init)
    # an empty selection leaves acc = 0 and row_sum = 0: output 0, lse -inf
    o_ref[...] = (acc / jnp.where(row_sum > 0, row_sum, 1.0)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = row_max + jnp.log2(row_sum)


def _dq_kernel(
    indices_ref, counts_ref, q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dq_ref, *, block_k, scale, key_padding
):
    # q_ref / do_ref / dq_ref [cq, D], lse_ref / delta_ref [cq], k_ref / v_ref [Sk, D]
    count = counts_ref[pl.program_id(0)]
    q = q_ref[...]
    do = do_ref[...]
    lse = lse_ref[...]
    delta = delta_ref[...]
    logit_scale = scale * _LOG2E
    positions = None if key_padding is None else jnp.arange(block_k, dtype=jnp.int32)[None, :]  # [1, ck]

    def visit_key_block(j, dq):
        block = indices_ref[j]
        start = pl.multiple_of(block * block_k, block_k)
        k = k_ref[pl.ds(start, block_k), :]
        v = v_ref[pl.ds(start, block_k), :]
        logits = mask_padded_keys(_dot(q, k, transpose_b=True) * logit_scale, key_padding, block, positions)
        probs = jnp.exp2(logits - lse[:, None])  # [cq, ck]
        dprobs = _dot(do, v, transpose_b=True)  # [cq, ck]
        dlogits = probs * (dprobs - delta[:, None])
        return dq + _dot(dlogits.astype(k.dtype), k)

    dq = jax.lax.fori_loop(0, count, visit_key_block, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkdv_kernel(
    indices_ref, counts_ref, k_ref, v_ref, q_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, block_q, scale,
    key_padding,
):
    # indices_ref [Mq_max]: query blocks that selected this key block; k_ref / v_ref [ck, D];
    # q_ref / do_ref [Sq, D]; lse_ref / delta_ref [Sq]. Works on transposed tiles [ck, cq].
    count = counts_ref[pl.program_id(0)]
    k = k_ref[...]
    v = v_ref[...]
    logit_scale = scale * _LOG2E
    if key_padding is not None:  # this key block and its tokens' positions, for the padding mask
        key_block = pl.program_id(0)
        positions = jnp.arange(k.shape[0], dtype=jnp.int32)[:, None]  # [ck, 1]

    def visit_query_block(j, carry):
        dk, dv = carry
        start = pl.multiple_of(indices_ref[j] * block_q, block_q)
        q = q_ref[pl.ds(start, block_q), :]
        do = do_ref[pl.ds(start, block_q), :]
        lse = lse_ref[pl.ds(start, block_q)]
        delta = delta_ref[pl.ds(start, block_q)]
        logits_t = _dot(k, q, transpose_b=True) * logit_scale  # [ck, cq]
        if key_padding is not None:
            logits_t = mask_padded_keys(logits_t, key_padding, key_block, positions)
        probs_t = jnp.exp2(logits_t - lse[None, :])
        dv = dv + _dot(probs_t.astype(do.dtype), do)
        dprobs_t = _dot(v, do, transpose_b=True)  # [ck, cq]
        dlogits_t = probs_t * (dprobs_t - delta[None, :])
        return dk + _dot(dlogits_t.astype(q.dtype), q), dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(0, count, visit_query_block, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _block_grid_specs(m, block, head_dim, width):
    """BlockSpecs shared by the kernels, for a grid (blocks, B, H) over m blocks of `block` tokens."""
    return dict(
        tile=pl.BlockSpec((None, block, None, head_dim), lambda i, bi, hi: (bi, i, hi, 0)),
        rows=pl.BlockSpec((None, None, block), lambda i, bi, hi: (bi, hi, i)),
        list=pl.BlockSpec((None, None, None, width), lambda i, bi, hi: (bi, hi, i, 0)),
        counts=pl.BlockSpec((None, None, m), lambda i, bi, hi: (bi, hi, 0)),
    )


def _full_sequence(seq, head_dim):
    return pl.BlockSpec((None, seq, None, head_dim), lambda i, bi, hi: (bi, 0, hi, 0))


def _full_rows(seq):
    return pl.BlockSpec((None, None, seq), lambda i, bi, hi: (bi, hi, 0))


def triton_forward(q, k, v, indices, starts, counts, block_q, block_k, config, key_padding: GridPadding | None = None):
    """Forward kernel: (out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] float32, base 2).

    Each query block visits entries [starts, starts + counts) of its index list (starts, counts [B, H, Mq]).
    key_padding: None, or the padding of k's grid (k then holds the padded grid): padded keys get no weight.
    """
    b, sq, h, d = q.shape
    sk = k.shape[1]
    mq = sq // block_q
    specs = _block_grid_specs(mq, block_q, d, indices.shape[-1])
    return pl.pallas_call(
        functools.partial(_forward_kernel, block_k=block_k, scale=d**-0.5, key_padding=key_padding),
        grid=(mq, b, h),
        in_specs=[
            specs["list"], specs["counts"], specs["counts"], specs["tile"], _full_sequence(sk, d),
            _full_sequence(sk, d),
        ],
        out_specs=[specs["tile"], specs["rows"]],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((b, h, sq), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
        interpret=config.interpret,
        name="bsa_forward",
    )(indices, starts, counts, q, k, v)


def triton_backward(q, k, v, indices, counts, delta, lse, do, block_q, block_k, config, key_padding=None):
    """Backward kernels: (dq, dk, dv) in the dtypes of q, k, v; delta [B, H, Sq] float32 = rowsum(out * do)
    (`sparse_attention.backward_delta`). key_padding as in `triton_forward`."""
    b, sq, h, d = q.shape
    sk = k.shape[1]
    mq, mk = sq // block_q, sk // block_k
    scale = d**-0.5
    params = plgpu.CompilerParams(num_warps=config.bwd_num_warps, num_stages=config.bwd_num_stages)
    do = do.astype(q.dtype)

    q_specs = _block_grid_specs(mq, block_q, d, indices.shape[-1])
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, block_k=block_k, scale=scale, key_padding=key_padding),
        grid=(mq, b, h),
        in_specs=[
            q_specs["list"], q_specs["counts"], q_specs["tile"], q_specs["tile"], q_specs["rows"], q_specs["rows"],
            _full_sequence(sk, d), _full_sequence(sk, d),
        ],
        out_specs=q_specs["tile"],
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        interpret=config.interpret,
        name="bsa_backward_dq",
    )(indices, counts, q, do, lse, delta, k, v)

    k_indices, k_counts = transpose_selection(indices, counts, mk)  # [B, H, Mk, Mq], [B, H, Mk]
    k_specs = _block_grid_specs(mk, block_k, d, k_indices.shape[-1])
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, block_q=block_q, scale=scale, key_padding=key_padding),
        grid=(mk, b, h),
        in_specs=[
            k_specs["list"], k_specs["counts"], k_specs["tile"], k_specs["tile"],
            _full_sequence(sq, d), _full_sequence(sq, d), _full_rows(sq), _full_rows(sq),
        ],
        out_specs=[k_specs["tile"], k_specs["tile"]],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        interpret=config.interpret,
        name="bsa_backward_dkdv",
    )(k_indices, k_counts, k, v, q, do, lse, delta)
    return dq, dk, dv
