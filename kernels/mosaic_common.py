"""What the Mosaic GPU BSA kernels (`pallas_mosaic` forward, `pallas_mosaic_backward`) share: the block size and
shared-memory budget of a Hopper CTA, tile layouts, the interpreter's switches and the online-softmax step."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu

LOG2E = math.log2(math.e)
BLOCK = 64  # tokens per query block and per key block
SMEM_BYTES = 232_448  # shared memory one CTA may use on Hopper
SMEM_ALIGN = 1024  # Pallas Mosaic GPU aligns each scratch buffer to this


def aligned(n: int, to: int) -> int:
    """n rounded up to a multiple of `to`."""
    return -(-n // to) * to


def tile_transforms(dtype, columns: int) -> tuple:
    """Tiling and swizzle of a shared-memory tile whose rows hold `columns` elements of `dtype` (the wgmma operand
    layout: a row of up to 128 bytes is one swizzle span)."""
    swizzle = min(128, columns * jnp.dtype(dtype).itemsize)
    return plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(swizzle)


def interpret_params(interpret: bool) -> dict:
    """`plgpu.kernel`'s extra arguments: JAX's Mosaic GPU interpreter (the CPU tests) when `interpret`, else none."""
    if not interpret:
        return {}
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return {"interpret": InterpretGPUParams()}


def dot_f32(a, b, *, transpose_b=False):
    """a @ b (or a @ b.T) accumulated in float32 (8-bit operands are widened first: the CPU has no FP8 dot)."""
    a, b = (x.astype(jnp.float32) if x.dtype.itemsize == 1 else x for x in (a, b))
    return lax.dot_general(a, b, (((1,), (1 if transpose_b else 0,)), ((), ())), preferred_element_type=jnp.float32)


def online_softmax(logits, row_max, row_sum, scale, weight_exponent):
    """One key block's online-softmax step in base 2: (weights [64, 64] f32, new_max, new_sum, correction [64]).

    logits [64, 64] unscaled; row_max / row_sum [64] of the blocks before; correction rescales their output.
    weight_exponent: the weights come out 2^weight_exponent too large (FP8's P scale), row_sum with them.
    """
    new_max = jnp.maximum(row_max, logits.max(axis=1) * scale)
    correction = jnp.exp2(row_max - new_max)
    offset = new_max - weight_exponent if weight_exponent else new_max
    weights = jnp.exp2(logits * scale - lax.broadcast_in_dim(offset, logits.shape, [0]))
    return weights, new_max, row_sum * correction + weights.sum(axis=1), correction


def rescale_rows(acc, factor):
    """acc [64, D] with each row times factor [64]."""
    return acc * lax.broadcast_in_dim(factor, acc.shape, [0])
