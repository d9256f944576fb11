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


def _operand_register_pairs(columns: int) -> list[tuple[int, int]]:
    """For weights [64, columns] (a multiple of 16): which two registers of the accumulator layout (e4m3 pairs, flat
    index 2 * (8-column tile) + row group) make each register of the 8-bit A-operand layout (flat index
    2 * (16-column tile) + row group): the two 8-column tiles of its 16 columns, same row group."""
    return [(2 * (2 * tile) + group, 2 * (2 * tile + 1) + group) for tile in range(columns // 16) for group in range(2)]


def e4m3_weights_operand(weights):
    """The softmax weights [64, N] float32 (wgmma accumulator layout) as P·V's A operand: e4m3 in the 8-bit wgmma
    A-operand layout, in registers, its keys in `fp8_operands.to_weights_key_order` (V^T holds its keys so).

    Why: the 8-bit operand's layout gives each thread 4 neighbouring columns where the accumulator's gave it two pairs
    8 columns apart, and Mosaic GPU has no relayout between the two; the kernel went through a shared-memory tile
    (16 two-byte stores a thread, a fence and a barrier each key block). Here each thread's bytes stay where they are
    and are read as the operand's, which permutes each 16 keys the same way in every row (`weights_operand_key_order`):
    P·V is unchanged when V's keys are permuted alike.
    """
    rows, columns = weights.shape

    @plgpu.inline_mgpu(
        arg_types=(plgpu.Layout.WGMMA,),
        return_type=plgpu.ShapeDtypeStruct((rows, columns), jnp.float8_e4m3fn, layout=plgpu.Layout.WGMMA_8BIT),
    )
    def relabelled(_, weights):
        pairs = weights.astype(ir.Float8E4M3FNType.get()).registers  # vector<2 x e4m3> each
        operand_shape = mgpu.WGMMA_LAYOUT_8BIT.registers_shape((rows, columns))
        flat = pairs.reshape(-1)
        joined = [mgpu.utils.vector_concat([flat[a], flat[b]]) for a, b in _operand_register_pairs(columns)]
        registers = np.empty(len(joined), dtype=object)
        registers[:] = joined
        return mgpu.FragmentedArray(
            _registers=registers.reshape(operand_shape), _layout=mgpu.WGMMA_LAYOUT_8BIT, _is_signed=None
        )

    return relabelled(plgpu.layout_cast(weights, plgpu.Layout.WGMMA))


def weights_operand_key_order(columns: int = BLOCK) -> list[int]:
    """Which key of the weights each column of `e4m3_weights_operand`'s operand holds, worked out from Mosaic GPU's two
    register layouts (each thread's bytes followed through `_operand_register_pairs`); raises ValueError where the
    relabelling would not be one column permutation for every row (a layout changed)."""
    source = _element_positions(mgpu.WGMMA_LAYOUT, (BLOCK, columns))
    target = _element_positions(mgpu.WGMMA_LAYOUT_8BIT, (BLOCK, columns))
    order = [-1] * columns
    for thread, target_registers in target.items():
        for register, (a, b) in enumerate(_operand_register_pairs(columns)):
            held = source[thread][a] + source[thread][b]  # the bytes joined into this operand register
            for (row, column), (key_row, key) in zip(target_registers[register], held, strict=True):
                if row != key_row or order[column] not in (-1, key):
                    raise ValueError(f"the relabelled weights are not a column permutation at {thread=}, {register=}")
                order[column] = key
    if sorted(order) != list(range(columns)):
        raise ValueError(f"the relabelled weights do not hold every key once: {order=}")
    return order


def _element_positions(layout, shape) -> dict:
    """{(warp, lane): [the (row, column) of each element of each register, by flat register index]} of a tiled layout
    on one warpgroup's array (pure index arithmetic on the layout's tiling)."""
    tiled_shape = layout.tiling.tile_shape(shape)
    registers_shape = layout.registers_shape(shape)
    positions: dict = {}
    for row in range(shape[0]):
        for column in range(shape[1]):
            index = list(layout.tiling.tile_indices((row, column)))
            warp = index[layout.warp_dims[0]]
            lane = 0
            for dim in layout.lane_dims:
                lane = lane * tiled_shape[dim] + index[dim]
            element = index[layout.vector_dim]
            for dim in (*layout.warp_dims, *layout.lane_dims, layout.vector_dim):
                index[dim] = 0
            register = int(np.ravel_multi_index(index, registers_shape))
            slots = positions.setdefault((warp, lane), {})
            slots.setdefault(register, {})[element] = (row, column)
    return {
        thread: [[slots[r][e] for e in sorted(slots[r])] for r in sorted(slots)] for thread, slots in positions.items()
    }
