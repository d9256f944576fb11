"""Raster order -> 3D-chunk order and each block's mean, in one pass (Pallas, Triton lowering).

Why: block selection needs the mean of every q and k block; taking it from the reordered copy reads q and
k a second time (two reductions of 0.42 ms each in a 19 ms call at 84,480 tokens on an H100). One
program per (chunk, batch, head) reads the chunk's tokens from raster order, writes them contiguously and
writes their float32 mean. For the FP8 BSA forward (`KernelConfig(fp8=True)`) the same pass writes q, k and v in
e4m3, each block over its own scale (its amax over e4m3's largest value, which the program finds in the tile it
holds), V transposed to [B, H, D, S]: the e4m3 operands and their scales then cost no pass of their own. For the
backward, `chunk_with_delta` reorders the output's cotangent and takes delta = rowsum(out * do) from the raster-ordered
output in the same pass, so the output itself is never reordered.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.errors import BSAInputError
from kernels.fp8_operands import E4M3, scale_of, to_weights_key_order
from kernels.layout import check_tokens, chunk_grid, from_chunk_order


def _chunk_kernel(x_ref, out_ref, pooled_ref):
    # x_ref [t, h, w, D] one chunk of one head in raster order; out_ref [t*h*w, D]; pooled_ref [D] float32
    tile = x_ref[...]
    tile = tile.reshape(out_ref.shape)
    out_ref[...] = tile
    pooled_ref[...] = jnp.mean(tile.astype(jnp.float32), axis=0)


def _over_own_scale(tile: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(the float32 tile over its own scale, that scale: `scale_of` the tile's amax)."""
    scale = scale_of(jnp.max(jnp.abs(tile)))
    return tile * (1.0 / scale), scale


def _chunk_e4m3_kernel(x_ref, out_ref, pooled_ref, scale_ref):
    # as _chunk_kernel, the tokens over the block's scale in e4m3, that scale in scale_ref [1]; the means of the
    # unscaled tokens
    tile = x_ref[...].reshape(out_ref.shape).astype(jnp.float32)
    scaled, scale = _over_own_scale(tile)
    out_ref[...] = scaled.astype(out_ref.dtype)
    scale_ref[...] = jnp.full(scale_ref.shape, scale)
    pooled_ref[...] = jnp.mean(tile, axis=0)


def e4m3_transposed_tile(tile: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One block of V, [t*h*w, D] float32 -> (its tokens as columns (V^T) over the block's scale, in the FP8
    kernel's P·V key order, [D, t*h*w] float32 for an e4m3 store; that scale): a kernel body's tile math."""
    scaled, scale = _over_own_scale(tile)
    return to_weights_key_order(scaled, axis=0).T, scale


def _chunk_e4m3_transposed_kernel(x_ref, out_ref, scale_ref):
    # out_ref [D, t*h*w]: `e4m3_transposed_tile` in e4m3; scale_ref [1] its scale
    tokens, scale = e4m3_transposed_tile(x_ref[...].reshape(out_ref.shape[::-1]).astype(jnp.float32))
    out_ref[...] = tokens.astype(out_ref.dtype)
    scale_ref[...] = jnp.full(scale_ref.shape, scale)


@functools.partial(jax.jit, static_argnames=("latent_shape", "chunk_shape", "interpret"))
def chunk_and_pool(
    x: jax.Array, latent_shape: Sequence[int], chunk_shape: Sequence[int], *, interpret: bool = False
) -> tuple[jax.Array, jax.Array]:
    """[B, S, H, D] raster-ordered tokens -> (the same in chunk order, block means [B, H, M, D] float32).

    Equals `(layout.to_chunk_order(x), selection.pool_blocks(...))`, gradients included; chunk sides must be
    powers of two.
    """
    check_tokens(x, latent_shape)
    chunk_grid(latent_shape, chunk_shape)
    return _chunk_and_pool(x, tuple(latent_shape), tuple(chunk_shape), interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _chunk_and_pool(x, latent_shape, chunk_shape, interpret):
    return _chunk_call(_chunk_kernel, x, latent_shape, chunk_shape, x.dtype, "pooled", interpret, "bsa_chunk_and_pool")


def _raster_chunk_spec(latent_shape, chunk_shape, head_dim: int) -> pl.BlockSpec:
    """The block of grid (chunk c, batch, head) in a [B, T, H, W, heads, D] view of raster-ordered tokens: chunk c's
    [t, h, w, D] tokens of that head, chunks counted in (Nt, Nh, Nw) raster order."""
    _, nh, nw = chunk_grid(latent_shape, chunk_shape)
    t, h, w = chunk_shape
    return pl.BlockSpec((None, t, h, w, None, head_dim),
                        lambda c, bi, hi: (bi, c // (nh * nw), (c // nw) % nh, c % nw, hi, 0))


def _chunk_call(kernel, x, latent_shape, chunk_shape, dtype, outputs: str, interpret: bool, name: str):
    """One program per (chunk, batch, head) running `kernel` on the chunk's raster-ordered tokens, writing in `dtype`
    (outputs): "pooled": chunk order [B, S, H, D] and the block means [B, H, M, D] float32; "scaled": those and each
    block's scale [B, H, M] float32; "transposed": [B, H, D, S] and each block's scale."""
    nt, nh, nw = chunk_grid(latent_shape, chunk_shape)
    t, h, w = chunk_shape
    b, s, heads, d = x.shape
    size = t * h * w
    grid_x = x.reshape(b, *latent_shape, heads, d)  # [B, T, H, W, heads, D]
    blocks = nt * nh * nw
    if outputs == "transposed":
        out_specs = [pl.BlockSpec((None, None, d, size), lambda c, bi, hi: (bi, hi, 0, c))]
        out_shape = [jax.ShapeDtypeStruct((b, heads, d, s), dtype)]
    else:
        out_specs = [
            pl.BlockSpec((None, size, None, d), lambda c, bi, hi: (bi, c, hi, 0)),
            pl.BlockSpec((None, None, None, d), lambda c, bi, hi: (bi, hi, c, 0)),
        ]
        out_shape = [jax.ShapeDtypeStruct(x.shape, dtype), jax.ShapeDtypeStruct((b, heads, blocks, d), jnp.float32)]
    if outputs != "pooled":  # each block's scale
        out_specs.append(pl.BlockSpec((None, None, 1), lambda c, bi, hi: (bi, hi, c)))
        out_shape.append(jax.ShapeDtypeStruct((b, heads, blocks), jnp.float32))
    return pl.pallas_call(
        kernel,
        grid=(blocks, b, heads),
        in_specs=[_raster_chunk_spec(latent_shape, chunk_shape, d)],
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name=name,
    )(grid_x)


def _chunk_with_delta_kernel(do_ref, out_ref, do_chunk_ref, delta_ref):
    # do_ref, out_ref [t, h, w, D] one chunk of one head in raster order; do_chunk_ref [t*h*w, D]; delta_ref [t*h*w]
    do = do_ref[...].reshape(do_chunk_ref.shape)
    do_chunk_ref[...] = do.astype(do_chunk_ref.dtype)
    out = out_ref[...].reshape(do_chunk_ref.shape)
    delta_ref[...] = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)


@functools.partial(jax.jit, static_argnames=("latent_shape", "chunk_shape", "dtype", "interpret"))
def chunk_with_delta(
    do: jax.Array, out: jax.Array, latent_shape: Sequence[int], chunk_shape: Sequence[int], dtype,
    *, interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """do, out [B, S, H, D] raster-ordered (the attention's output and its cotangent) -> (do in chunk order and
    `dtype` [B, S, H, D]; delta = rowsum(out * do) [B, H, S] float32 in chunk order), the backward kernels' inputs.
    Equals `(layout.to_chunk_order(do).astype(dtype), sparse_attention.backward_delta(...))` of the chunk-ordered
    pair. Not differentiable (a backward's own pass)."""
    check_tokens(do, latent_shape)
    if out.shape != do.shape:
        raise BSAInputError(f"the attention's output {out.shape} and its cotangent {do.shape} must have one shape")
    nt, nh, nw = chunk_grid(latent_shape, chunk_shape)
    b, s, heads, d = do.shape
    size = math.prod(chunk_shape)
    raster = _raster_chunk_spec(latent_shape, chunk_shape, d)
    return pl.pallas_call(
        _chunk_with_delta_kernel,
        grid=(nt * nh * nw, b, heads),
        in_specs=[raster, raster],
        out_specs=[
            pl.BlockSpec((None, size, None, d), lambda c, bi, hi: (bi, c, hi, 0)),
            pl.BlockSpec((None, None, size), lambda c, bi, hi: (bi, hi, c)),
        ],
        out_shape=[jax.ShapeDtypeStruct(do.shape, dtype), jax.ShapeDtypeStruct((b, heads, s), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name="bsa_chunk_with_delta",
    )(do.reshape(b, *latent_shape, heads, d), out.reshape(b, *latent_shape, heads, d))


@functools.partial(jax.jit, static_argnames=("latent_shape", "chunk_shape", "interpret"))
def chunk_to_e4m3(x: jax.Array, latent_shape: Sequence[int], chunk_shape: Sequence[int], *, interpret: bool = False):
    """[B, S, H, D] raster-ordered tokens -> (the tokens in chunk order and e4m3, each block over its own scale
    [B, S, H, D]; the block means [B, H, M, D] float32 of the unscaled tokens; the block scales [B, H, M] float32),
    as `fp8_operands.block_scales` and the FP8 kernel's q and k. Not differentiable (the FP8 forward is inference
    only)."""
    check_tokens(x, latent_shape)
    chunk_grid(latent_shape, chunk_shape)
    return _chunk_call(_chunk_e4m3_kernel, x, tuple(latent_shape), tuple(chunk_shape), E4M3, "scaled", interpret,
                       "bsa_chunk_to_e4m3")


@functools.partial(jax.jit, static_argnames=("latent_shape", "chunk_shape", "interpret"))
def chunk_to_e4m3_transposed(
    x: jax.Array, latent_shape: Sequence[int], chunk_shape: Sequence[int], *, interpret: bool = False
) -> tuple[jax.Array, jax.Array]:
    """[B, S, H, D] raster-ordered tokens -> (the tokens in chunk order and e4m3, each block over its own scale,
    transposed to [B, H, D, S] with each block's keys in `fp8_operands.to_weights_key_order` (the FP8 kernel's V^T);
    the block scales [B, H, M] float32). Not differentiable."""
    check_tokens(x, latent_shape)
    chunk_grid(latent_shape, chunk_shape)
    return _chunk_call(_chunk_e4m3_transposed_kernel, x, tuple(latent_shape), tuple(chunk_shape), E4M3, "transposed",
                       interpret, "bsa_chunk_to_e4m3_transposed")


def _chunk_and_pool_fwd(x, latent_shape, chunk_shape, interpret):
    return _chunk_and_pool(x, latent_shape, chunk_shape, interpret), None


def _chunk_and_pool_bwd(latent_shape, chunk_shape, interpret, _, cotangents):
    d_chunked, d_pooled = cotangents  # [B, S, H, D], [B, H, M, D]
    b, s, heads, d = d_chunked.shape
    size = math.prod(chunk_shape)
    d_means = jnp.repeat(jnp.swapaxes(d_pooled, 1, 2) / size, size, axis=1)  # [B, S, H, D], chunk order
    d_x = from_chunk_order(d_chunked.astype(jnp.float32) + d_means, latent_shape, chunk_shape)
    return (d_x.astype(d_chunked.dtype),)


_chunk_and_pool.defvjp(_chunk_and_pool_fwd, _chunk_and_pool_bwd)
