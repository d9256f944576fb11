"""What the Mosaic GPU BSA kernels (`pallas_mosaic` forward, `pallas_mosaic_backward`) share: the block size and
shared-memory budget of a Hopper CTA, tile layouts and the interpreter's switches."""

from __future__ import annotations

import inspect
import math

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu

LOG2E = math.log2(math.e)
BLOCK = 64  # tokens per query block and per key block
SMEM_BYTES = 232_448  # shared memory one CTA may use on Hopper
SMEM_ALIGN = 1024  # Pallas Mosaic GPU aligns each scratch buffer to this
# jax 0.10 requires `plgpu.load`'s index as its own argument; 0.11 deprecates that (the index goes through `ref.at`)
_LOAD_NEEDS_INDEX = inspect.signature(plgpu.load).parameters["idx"].default is inspect.Parameter.empty


def aligned(n: int, to: int) -> int:
    """n rounded up to a multiple of `to`."""
    return -(-n // to) * to


def tile_transforms(dtype, columns: int) -> tuple:
    """Tiling and swizzle of a shared-memory tile whose rows hold `columns` elements of `dtype` (the wgmma operand
    layout: a row of up to 128 bytes is one swizzle span)."""
    swizzle = min(128, columns * jnp.dtype(dtype).itemsize)
    return plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(swizzle)


def load_whole(ref, layout):
    """All of a shared-memory ref in registers, in `layout` (either jax's form of `plgpu.load`, no warning)."""
    if _LOAD_NEEDS_INDEX:
        return plgpu.load(ref, (), layout=layout)
    return plgpu.load(ref, layout=layout)


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
