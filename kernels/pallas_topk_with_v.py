"""The top-k selection and V's transposed e4m3 pass in one launch, their programs interleaved (Pallas, Triton).

Why: in the FP8 whole call (`KernelConfig(fp8=True)`) the top-k (`pallas_topk`, bound by its compares) and V's
transposed e4m3 pass (`pallas_chunking.chunk_to_e4m3_transposed`, bound by DRAM) ran one after the other, 0.43 and
0.37 ms at 84,480 tokens on an H100 (BENCHMARKS.md), though neither needs the other's output. Here one grid holds
both kinds of program, alternating (a row of block scores, then a chunk of V, ...), so each SM runs some of each and
V's reads go on under the top-k's compares. Each program does exactly what its own kernel's program does, so the
outputs are those of the two kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.fp8_operands import E4M3
from kernels.layout import check_tokens, chunk_grid
from kernels.pallas_chunking import e4m3_transposed_tile
from kernels.pallas_topk import RowLayout, fits


def interleaved(program, first: int, second: int):
    """(whether program `program` of a grid of first + second programs is of the first kind, its index in its kind):
    the kinds alternate, first kind first, while both last, then the longer one's rest follows."""
    both = min(first, second)
    in_both = program < 2 * both
    is_first = jnp.where(in_both, program % 2 == 0, first > second)
    return is_first, jnp.where(in_both, program // 2, program - both)


def _v_chunk(v_ref, v_t_ref, v_scales_ref, index, *, grid_shape, chunk_shape, batch, heads):
    # v_ref [B, T, H, W, heads, D] raster order; v_t_ref [B, heads, D, S] e4m3; v_scales_ref [B, heads, M] float32.
    # Chunk `index` in (chunk, batch, head) order, head fastest, as `pallas_chunking`'s grid.
    nt, nh, nw = grid_shape
    t, h, w = chunk_shape
    size = t * h * w
    chunk, bi, hi = index // (batch * heads), (index // heads) % batch, index % heads
    ct, ch, cw = chunk // (nh * nw), (chunk // nw) % nh, chunk % nw
    tile = v_ref[bi, pl.ds(ct * t, t), pl.ds(ch * h, h), pl.ds(cw * w, w), hi, :]  # [t, h, w, D]
    tokens, scale = e4m3_transposed_tile(tile.reshape(size, tile.shape[-1]).astype(jnp.float32))  # [D, size]
    v_t_ref[bi, hi, :, pl.ds(chunk * size, size)] = tokens.astype(v_t_ref.dtype)
    v_scales_ref[bi, hi, pl.ds(chunk, 1)] = jnp.full((1,), scale)


@functools.partial(jax.jit, static_argnames=("k", "latent_shape", "chunk_shape", "interpret", "split_rows"))
def top_k_and_v_to_e4m3(
    scores: jax.Array,
    k: int,
    v: jax.Array,
    latent_shape: Sequence[int],
    chunk_shape: Sequence[int],
    *,
    interpret: bool = False,
    split_rows: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`pallas_topk.top_k_indices(scores, k)` and `pallas_chunking.chunk_to_e4m3_transposed(v, latent_shape,
    chunk_shape)` in one launch: (indices [..., k] int32 ascending, V^T [B, H, D, S] e4m3, V's block scales
    [B, H, M] float32). scores [..., N] float32 (N <= `pallas_topk.MAX_ROW`), v [B, S, H, D] raster order."""
    check_tokens(v, latent_shape)
    grid_shape = chunk_grid(latent_shape, chunk_shape)
    layout = RowLayout.of(scores, k, split_rows)
    if not fits(layout.num):
        raise ValueError(f"rows of {layout.num} scores exceed the top-k kernel's; use pallas_topk.top_k_indices")
    b, s, heads, d = v.shape
    blocks = grid_shape[0] * grid_shape[1] * grid_shape[2]
    v_programs = blocks * b * heads
    v_chunk = functools.partial(_v_chunk, grid_shape=grid_shape, chunk_shape=tuple(chunk_shape), batch=b, heads=heads)

    def kernel(scores_ref, v_ref, indices_ref, v_t_ref, v_scales_ref):
        is_row, index = interleaved(pl.program_id(0), layout.rows, v_programs)

        @pl.when(is_row)
        def _():
            layout.row_kernel(scores_ref, indices_ref, index)

        @pl.when(jnp.logical_not(is_row))
        def _():
            v_chunk(v_ref, v_t_ref, v_scales_ref, index)

    indices, v_t, v_scales = pl.pallas_call(
        kernel,
        grid=(layout.rows + v_programs,),
        in_specs=[pl.BlockSpec(), pl.BlockSpec()],
        out_specs=[pl.BlockSpec(), pl.BlockSpec(), pl.BlockSpec()],
        out_shape=[
            layout.output_shape(),
            jax.ShapeDtypeStruct((b, heads, d, s), E4M3),
            jax.ShapeDtypeStruct((b, heads, blocks), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=layout.num_warps, num_stages=1),
        interpret=interpret,
        name="bsa_top_k_and_v_to_e4m3",
    )(layout.flat_scores(scores, interpret), v.reshape(b, *latent_shape, heads, d))
    return layout.indices(indices, scores.shape[:-1]), v_t, v_scales
