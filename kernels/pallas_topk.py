"""Exact top-k block selection as a Pallas kernel (Triton lowering), one row of block scores per program.

XLA computes top-k with k ~ 80-170 out of 1,320-2,640 by sorting every row, which dominated the
selection time (3.5 ms of 4.2 ms at 84,480 tokens on an H100). Here each program holds its row in
registers and finds the k-th largest score by a radix search on order-preserving int32 keys (one count
per bit, stopping once exactly k keys are at or above the threshold), then writes the indices of the k
largest in ascending order through a prefix sum. Ties at the threshold go to the lower index, as with `jax.lax.top_k`.

Triton arrays have power-of-two lengths, so a row is held as one array padded to the next power of two, or, with
`split_rows`, as a few power-of-two pieces (`row_pieces`: 2,640 scores as 2,048 + 512 + 128 lanes rather than 4,096),
about a third fewer compares per count. Pieces pay off on long rows only: on an H100 (BENCHMARKS.md) 2,640 scores a row
ran 1.13-1.14x faster as pieces, 1,320 (1,024 + 256 + 128 lanes against 2,048) 0.94-0.97x, the pieces' extra
block-wide reductions outweighing the padding's compares; so by default (`split_rows=None`) rows split where their
padded length exceeds SPLIT_ROWS_ABOVE (`KernelConfig.top_k_row_pieces` overrides).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MAX_ROW = 8192  # longest padded row a program holds (32 scores per thread with 8 warps)
MIN_PIECE = 128  # one score per thread of four warps
MAX_PIECES = 3
SPLIT_ROWS_ABOVE = 2048  # padded row length past which rows split by default: measured 2,048 (no) and 4,096 (yes)


def row_pieces(num: int) -> tuple[int, ...]:
    """Power-of-two lengths, largest first, that together cover `num` scores: the binary digits of `num` rounded up to
    a multiple of MIN_PIECE, the smallest merged upwards while there are more than MAX_PIECES (two equal pieces
    become one of twice the length: the same lanes, one reduction less a count)."""
    covered = -(-num // MIN_PIECE) * MIN_PIECE
    pieces = [1 << bit for bit in reversed(range(covered.bit_length())) if covered >> bit & 1]
    while len(pieces) > MAX_PIECES:
        smallest = pieces.pop()
        pieces[-1] = pl.next_power_of_2(pieces[-1] + smallest)
        while len(pieces) > 1 and pieces[-1] == pieces[-2]:  # two equal halves make the next power, one count less
            pieces[-2:] = [2 * pieces[-1]]
    return tuple(pieces)


def _sortable_keys(scores: jax.Array) -> jax.Array:
    """float32 -> int32 with the same order (negative floats get their magnitude bits flipped)."""
    bits = jax.lax.bitcast_convert_type(scores, jnp.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def top_k_row(scores_ref, indices_ref, row, *, k, num, rows, pieces):
    """One program's work: the top-k of row `row` (a traced scalar) into its slots."""
    # scores_ref [R * num (+ padding)] float32 (all rows, flat); indices_ref [R * k + sum(pieces)] int32: row r's
    # indices at [r * k, r * k + k), then a scratch tail that only masked-off stores address
    offsets = [sum(pieces[:i]) for i in range(len(pieces))]
    columns = [offset + jnp.arange(piece, dtype=jnp.int32) for offset, piece in zip(offsets, pieces, strict=True)]
    keys = [
        _sortable_keys(plgpu.load(scores_ref.at[pl.ds(row * num + offset, piece)], mask=cols < num, other=-jnp.inf))
        for offset, piece, cols in zip(offsets, pieces, columns, strict=True)
    ]  # each [piece], padded with -inf

    def count(predicate):
        return functools.reduce(lambda total, part: total + jnp.sum(predicate(part).astype(jnp.int32)), keys, 0)

    def count_at_least(threshold):
        return count(lambda part: part >= threshold)

    # a threshold t with count(keys >= t) >= k, raised bit by bit from the sign bit down: it ends as the k-th
    # largest key, or earlier once exactly k keys reach it (then those k are the selection)
    start = jnp.where(count_at_least(0) >= k, 0, jnp.int32(-(2**31)))

    def undecided(state):
        bit, _, count_now = state
        return (bit < 31) & (count_now != k)

    def next_bit(state):
        bit, threshold, count_now = state
        candidate = threshold | jnp.left_shift(jnp.int32(1), 30 - bit)
        candidate_count = count_at_least(candidate)
        take = candidate_count >= k
        return bit + 1, jnp.where(take, candidate, threshold), jnp.where(take, candidate_count, count_now)

    _, threshold, _ = jax.lax.while_loop(undecided, next_bit, (jnp.int32(0), start, count_at_least(start)))
    ties_wanted = k - count(lambda part: part > threshold)
    # selected columns go to the row's slots [r * k, r * k + k) in column order; the others get distinct slots of the
    # tail, masked out, so that no two stores share a slot (the interpreter emulates masked stores)
    ties_before, kept_before, dropped_before = 0, 0, 0
    for piece, (part, cols) in enumerate(zip(keys, columns, strict=True)):
        ties = part == threshold
        tie_rank = ties_before + jax.lax.cumsum(ties.astype(jnp.int32), axis=0)
        selected = (part > threshold) | (ties & (tie_rank <= ties_wanted))
        kept = kept_before + jax.lax.cumsum(selected.astype(jnp.int32), axis=0) - 1
        dropped = dropped_before + jax.lax.cumsum((~selected).astype(jnp.int32), axis=0) - 1
        slots = jnp.where(selected, row * k + kept, rows * k + dropped)
        plgpu.store(indices_ref.at[slots], cols, mask=selected)
        if piece == len(keys) - 1:
            break
        ties_before = ties_before + jnp.sum(ties.astype(jnp.int32))
        kept_before = kept_before + jnp.sum(selected.astype(jnp.int32))
        dropped_before = dropped_before + jnp.sum((~selected).astype(jnp.int32))


def splits_rows(num: int, split_rows: bool | None = None) -> bool:
    """Whether rows of `num` scores are held as `row_pieces`: as asked, or (None) where the padded row is longer than
    SPLIT_ROWS_ABOVE."""
    return pl.next_power_of_2(num) > SPLIT_ROWS_ABOVE if split_rows is None else split_rows


def fits(num: int) -> bool:
    """Whether a row of `num` scores fits one program (longer rows go to `jax.lax.top_k`)."""
    return pl.next_power_of_2(num) <= MAX_ROW


class RowLayout(NamedTuple):
    """How a top-k launch holds its rows: `rows` rows of `num` scores, `k` kept, each row as `pieces`."""

    rows: int
    num: int
    k: int
    pieces: tuple[int, ...]

    @classmethod
    def of(cls, scores: jax.Array, k: int, split_rows: bool | None) -> RowLayout:
        *batch, num = scores.shape
        if not 0 < k <= num:
            raise ValueError(f"k must be in [1, {num}], got {k}")
        pieces = row_pieces(num) if splits_rows(num, split_rows) else (pl.next_power_of_2(num),)
        return cls(math.prod(batch), num, k, pieces)

    @property
    def num_warps(self) -> int:
        return 4 if sum(self.pieces) <= 4096 else 8

    def flat_scores(self, scores: jax.Array, interpret: bool) -> jax.Array:
        """The kernel's input: the rows flat, float32 [rows * num (+ one row's padding in the interpreter)]."""
        flat = scores.reshape(self.rows * self.num).astype(jnp.float32)
        if interpret:  # the kernel reads each row's padding from the next row, masked; the interpreter needs it in bounds
            flat = jnp.pad(flat, (0, sum(self.pieces) - self.num))
        return flat

    def output_shape(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((self.rows * self.k + sum(self.pieces),), jnp.int32)  # k a row, then scratch

    def indices(self, output: jax.Array, batch: tuple[int, ...]) -> jax.Array:
        """[*batch, k] from the kernel's flat output (its scratch tail dropped)."""
        return output[: self.rows * self.k].reshape(*batch, self.k)

    def row_kernel(self, scores_ref, indices_ref, row) -> None:
        top_k_row(scores_ref, indices_ref, row, k=self.k, num=self.num, rows=self.rows, pieces=self.pieces)


@functools.partial(jax.jit, static_argnames=("k", "interpret", "split_rows"))
def top_k_indices(scores: jax.Array, k: int, *, interpret: bool = False, split_rows: bool | None = None) -> jax.Array:
    """Indices of the k largest entries of each row, ascending. [..., N] float32 -> [..., k] int32.

    split_rows: each row held as `row_pieces` (True) or as one array of the next power of two (False); None picks
    by the row's length (`splits_rows`)."""
    layout = RowLayout.of(scores, k, split_rows)
    if not fits(layout.num):
        return jnp.sort(jax.lax.top_k(scores, k)[1].astype(jnp.int32), axis=-1)
    out = pl.pallas_call(
        lambda scores_ref, indices_ref: layout.row_kernel(scores_ref, indices_ref, pl.program_id(0)),
        grid=(layout.rows,),
        in_specs=[pl.BlockSpec()],
        out_specs=pl.BlockSpec(),
        out_shape=layout.output_shape(),
        compiler_params=plgpu.CompilerParams(num_warps=layout.num_warps, num_stages=1),
        interpret=interpret,
        name="bsa_top_k",
    )(layout.flat_scores(scores, interpret))
    return layout.indices(out, scores.shape[:-1])
