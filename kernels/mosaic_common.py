"""What the Mosaic GPU BSA kernels (`pallas_mosaic` forward, `pallas_mosaic_backward`) share: the block size and
shared-memory budget of a Hopper CTA, tile layouts and the interpreter's switches."""

from __future__ import annotations

import inspect
import math

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.mosaic import gpu as mgpu
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxlib.mlir import ir
from jaxlib.mlir.dialects import arith, scf, vector

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


def rescaled_rows(acc, correction, row_max, new_max, interpret: bool):
    """acc [64, N] float32 (wgmma layout) times correction [64] along its rows, each thread skipping the multiplies when
    every row it holds kept its maximum (row_max == new_max, [64] each: its correction is then exactly 1).

    Why: the online softmax rescales its output accumulator at every key block (64 multiplies a thread at head_dim
    128), but a row's factor is 1 wherever its maximum held, which late in a long list is most blocks. A thread holds
    2 of the 64 rows, so the test is per thread: a warp skips when none of its 16 rows moved (FlashAttention-4's
    conditional rescale, exact here: a skipped factor is 1). Pallas has no branch on a per-thread value, so the branch
    is inlined at the Mosaic GPU level; the interpreter (CPU tests) multiplies every row, to the same result.
    """
    if interpret:
        return acc * lax.broadcast_in_dim(correction, acc.shape, [0])

    rows = plgpu.Layout.WGMMA.reduce(1)

    @plgpu.inline_mgpu(
        arg_types=(plgpu.Layout.WGMMA, rows, rows, rows),
        return_type=plgpu.ShapeDtypeStruct(acc.shape, jnp.float32, layout=plgpu.Layout.WGMMA),
    )
    def rescale(_, acc, correction, row_max, new_max):
        changed = None
        # this thread's rows, one float a register
        for old, new in zip(row_max.registers.flat, new_max.registers.flat, strict=True):
            for lane in range(ir.VectorType(old.type).shape[0]):
                moved = arith.cmpf(arith.CmpFPredicate.UNE, vector.extract(old, [], [lane]),
                                   vector.extract(new, [], [lane]))
                changed = moved if changed is None else arith.ori(changed, moved)
        registers = acc.registers
        branch = scf.IfOp(changed, [register.type for register in registers.flat], has_else=True)
        with ir.InsertionPoint(branch.then_block):
            scaled = acc * correction.broadcast_in_dim(acc.shape, (0,), acc.layout)
            scf.yield_(list(scaled.registers.flat))
        with ir.InsertionPoint(branch.else_block):
            scf.yield_(list(registers.flat))
        results = np.empty(registers.shape, dtype=object)
        for position, result in zip(np.ndindex(registers.shape), branch.results, strict=True):
            results[position] = result
        return mgpu.FragmentedArray(_registers=results, _layout=acc.layout, _is_signed=None)

    return rescale(plgpu.layout_cast(acc, plgpu.Layout.WGMMA), correction, row_max, new_max)


def dot_f32(a, b, *, transpose_b=False):
    """a @ b (or a @ b.T) accumulated in float32 (8-bit operands are widened first: the CPU has no FP8 dot)."""
    a, b = (x.astype(jnp.float32) if x.dtype.itemsize == 1 else x for x in (a, b))
    return lax.dot_general(a, b, (((1,), (1 if transpose_b else 0,)), ((), ())), preferred_element_type=jnp.float32)
