"""Raster order -> 3D-chunk order and each block's mean, in one pass (Pallas, Triton lowering).

Why: block selection needs the mean of every q and k block; taking it from the reordered copy reads q and
k a second time (two reductions of 0.42 ms each in a 19 ms call at 84,480 tokens on an H100). One
program per (chunk, batch, head) reads the chunk's tokens from raster order, writes them contiguously and
writes their float32 mean. For the FP8 BSA forward (`KernelConfig(fp8=True)`) the same pass writes the tokens in
e4m3 (scaled per head), and V transposed to [B, H, D, S]: the e4m3 operands then cost no pass of their own.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.fp8_operands import E4M3
from kernels.layout import check_tokens, chunk_grid, from_chunk_order


def _chunk_kernel(x_ref, out_ref, pooled_ref):
    # x_ref [t, h, w, D] one chunk of one head in raster order; out_ref [t*h*w, D]; pooled_ref [D] float32
    tile = x_ref[...]
    tile = tile.reshape(out_ref.shape)
    out_ref[...] = tile
    pooled_ref[...] = jnp.mean(tile.astype(jnp.float32), axis=0)


def _chunk_e4m3_kernel(x_ref, inv_scale_ref, out_ref, pooled_ref):
    # as _chunk_kernel, the tokens times inv_scale_ref [1] (the head's) in e4m3; the means of the unscaled tokens
    tile = x_ref[...].reshape(out_ref.shape).astype(jnp.float32)
    out_ref[...] = (tile * inv_scale_ref[...]).astype(out_ref.dtype)
    pooled_ref[...] = jnp.mean(tile, axis=0)


def _chunk_e4m3_transposed_kernel(x_ref, inv_scale_ref, out_ref):
    # out_ref [D, t*h*w]: the chunk's tokens as columns (V^T), times inv_scale_ref [1], in e4m3
    tile = x_ref[...].reshape(out_ref.shape[::-1]).astype(jnp.float32)
    out_ref[...] = (tile * inv_scale_ref[...]).T.astype(out_ref.dtype)


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
    return _chunk_call(_chunk_kernel, x, None, latent_shape, chunk_shape, x.dtype, False, interpret, "bsa_chunk_and_pool")


def _chunk_call(kernel, x, inv_scale, latent_shape, chunk_shape, dtype, transposed: bool, interpret: bool, name: str):
    """One program per (chunk, batch, head) running `kernel` on the chunk's raster-ordered tokens (and the head's
    [1] of inv_scale [B, H, 1] where given): out in `dtype`, chunk order [B, S, H, D] with the block means
    [B, H, M, D] float32, or transposed [B, H, D, S] alone."""
    nt, nh, nw = chunk_grid(latent_shape, chunk_shape)
    t, h, w = chunk_shape
    b, s, heads, d = x.shape
    size = t * h * w
    grid_x = x.reshape(b, *latent_shape, heads, d)  # [B, T, H, W, heads, D]

    def chunk_at(c, bi, hi):
        return (bi, c // (nh * nw), (c // nw) % nh, c % nw, hi, 0)

    in_specs, inputs = [pl.BlockSpec((None, t, h, w, None, d), chunk_at)], [grid_x]
    if inv_scale is not None:
        in_specs.append(pl.BlockSpec((None, None, 1), lambda c, bi, hi: (bi, hi, 0)))
        inputs.append(inv_scale)
    if transposed:
        out_specs = pl.BlockSpec((None, None, d, size), lambda c, bi, hi: (bi, hi, 0, c))
        out_shape = jax.ShapeDtypeStruct((b, heads, d, s), dtype)
    else:
        out_specs = [
            pl.BlockSpec((None, size, None, d), lambda c, bi, hi: (bi, c, hi, 0)),
            pl.BlockSpec((None, None, None, d), lambda c, bi, hi: (bi, hi, c, 0)),
        ]
        out_shape = [jax.ShapeDtypeStruct(x.shape, dtype), jax.ShapeDtypeStruct((b, heads, nt * nh * nw, d), jnp.float32)]
    return pl.pallas_call(
        kernel,
        grid=(nt * nh * nw, b, heads),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name=name,
    )(*inputs)


@functools.partial(jax.jit, static_argnames=("latent_shape", "chunk_shape", "transposed", "interpret"))
def chunk_to_e4m3(
    x: jax.Array, scale: jax.Array, latent_shape: Sequence[int], chunk_shape: Sequence[int], *,
    transposed: bool = False, interpret: bool = False,
):
    """[B, S, H, D] raster-ordered tokens over their per-head scale [B, H], in e4m3 and chunk order: (the tokens
    [B, S, H, D], the block means [B, H, M, D] float32 of the unscaled tokens), or with `transposed` the tokens
    alone as [B, H, D, S] (the FP8 kernel's V^T). Not differentiable (the FP8 forward is inference only)."""
    check_tokens(x, latent_shape)
    chunk_grid(latent_shape, chunk_shape)
    inv_scale = (1.0 / scale.astype(jnp.float32))[..., None]  # [B, H, 1]
    kernel = _chunk_e4m3_transposed_kernel if transposed else _chunk_e4m3_kernel
    name = "bsa_chunk_to_e4m3_transposed" if transposed else "bsa_chunk_to_e4m3"
    return _chunk_call(kernel, x, inv_scale, tuple(latent_shape), tuple(chunk_shape), E4M3, transposed, interpret, name)


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
