"""Token grids that the 3D chunks do not divide: padded up to whole chunks inside the attention.

Why: the kernels work on whole blocks (one chunk of t*h*w tokens each), but the 720p token grid (24, 45, 80)
has 45 rows, not a multiple of a 4-row chunk. `bsa_attention` pads each grid up to whole chunks with zero
tokens at the high end of every axis, and then keeps the result equal to the selection and attention rule
applied to the real tokens alone, the chunks at the edges holding fewer tokens:
- block means are taken over the real tokens only (`real_means`: the padded block's mean, padding counting as
  zeros, times t*h*w over the number of real tokens);
- padded keys never receive weight, in the selection (no block is all padding: ceil(T / t) chunks along T
  leave at least one real frame in the last, and so on along H and W, so every block keeps a real mean and a
  padded block never outranks a real one) and in the softmax of every backend;
- padded queries are attended for nothing and cropped from the output, so their gradient is zero.

How the kernels mask padded keys: from the key block's index and the static grid alone (`real_key_conditions`),
one comparison per axis that the chunks do not divide, applied to the logits as `where(real, logits, -inf)`.
Chosen over a per-key validity or bias array because it needs no extra input or memory traffic, works the same
in the Triton kernels (a [ck] vector of positions) and the Mosaic GPU one (a [64, 64] iota in the wgmma
layout, as JAX's own causal mask does), and is absent, not just all-true, when the chunks divide the grid: that
path stays the same code as before padding existed. The reference takes the same facts as a [Sk] mask
(`real_token_mask`) built in numpy, independently of the kernels' arithmetic. Backward: the kernels mask the
same logits, and padded queries get a zero output cotangent from the crop, so they add nothing to dk or dv.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels.layout import Grid, chunk_order_permutation, padded_chunk_grid


@dataclasses.dataclass(frozen=True)
class GridPadding:
    """A (T, H, W) token grid padded up to whole (t, h, w) chunks: zero tokens after the real ones on each axis.

    Hashable, so it can be a static argument of `jax.jit` and a kernel's compile-time setting.
    """

    latent: Grid
    chunk: Grid

    @classmethod
    def of(cls, latent_shape: Sequence[int], chunk_shape: Sequence[int], *, what: str = "") -> GridPadding:
        """The padding of `latent_shape` to whole `chunk_shape` chunks; refuses malformed shapes."""
        padded_chunk_grid(latent_shape, chunk_shape, what=what)
        return cls(tuple(int(n) for n in latent_shape), tuple(int(n) for n in chunk_shape))

    @property
    def blocks(self) -> Grid:
        """Chunks along (T, H, W) of the padded grid."""
        return padded_chunk_grid(self.latent, self.chunk)

    @property
    def padded(self) -> Grid:
        """The padded grid (T', H', W'): each side the next multiple of its chunk side."""
        return tuple(n * c for n, c in zip(self.blocks, self.chunk, strict=True))

    @property
    def needed(self) -> bool:
        """Whether the chunks leave any axis unfilled (False: the grid is used as it is)."""
        return self.padded != self.latent

    @property
    def num_blocks(self) -> int:
        return math.prod(self.blocks)

    @property
    def block_size(self) -> int:
        """Tokens of one (padded) block."""
        return math.prod(self.chunk)

    @property
    def padded_fraction(self) -> float:
        """Share of the padded grid's tokens that are padding."""
        return 1.0 - math.prod(self.latent) / math.prod(self.padded)

    def pad(self, x: jax.Array) -> jax.Array:
        """[B, T*H*W, heads, D] raster-ordered tokens -> [B, T'*H'*W', heads, D], zero tokens added (x if not needed)."""
        if not self.needed:
            return x
        b, _, heads, d = x.shape
        grid = x.reshape(b, *self.latent, heads, d)
        widths = [(0, 0)] + [(0, p - n) for n, p in zip(self.latent, self.padded, strict=True)] + [(0, 0), (0, 0)]
        return jnp.pad(grid, widths).reshape(b, math.prod(self.padded), heads, d)

    def crop(self, x: jax.Array) -> jax.Array:
        """[B, T'*H'*W', heads, D] raster-ordered tokens of the padded grid -> the real tokens (x if not needed)."""
        if not self.needed:
            return x
        b, _, heads, d = x.shape
        t, h, w = self.latent
        grid = x.reshape(b, *self.padded, heads, d)[:, :t, :h, :w]
        return grid.reshape(b, t * h * w, heads, d)

    def real_tokens_per_block(self) -> np.ndarray:
        """Real tokens of each block, in chunk order (blocks in (Nt, Nh, Nw) raster order). [M] int, all >= 1."""
        per_axis = [
            np.minimum(c, n - c * np.arange(m)) for n, c, m in zip(self.latent, self.chunk, self.blocks, strict=True)
        ]
        return np.einsum("i,j,k->ijk", *per_axis).reshape(-1)

    def real_means(self, pooled: jax.Array) -> jax.Array:
        """Block means over the padded blocks (padding counted as zeros) -> means over their real tokens only.

        pooled: [B, H, M, D] float32. Returns pooled itself where no padding is needed.
        """
        if not self.needed:
            return pooled
        scale = self.block_size / self.real_tokens_per_block().astype(np.float32)  # [M]
        return pooled * jnp.asarray(scale, jnp.float32)[:, None]

    def real_token_mask(self) -> np.ndarray:
        """Which tokens of the padded grid are real, in 3D-chunk order. [T'*H'*W'] bool."""
        axes = [np.arange(p) < n for n, p in zip(self.latent, self.padded, strict=True)]
        raster = np.einsum("i,j,k->ijk", *axes).reshape(-1)
        return raster[chunk_order_permutation(self.padded, self.chunk)]

    def real_key_conditions(self, block: jax.Array, positions: jax.Array) -> list[jax.Array]:
        """Where the token positions of key block `block` are real, as one bool array per axis the chunks do not
        divide (an empty list where the grid needs no padding); a position is real where all of them hold.

        block: int32 scalar, the block's index in chunk order; positions: int32 array (any shape) of token
        positions inside the block, 0 .. t*h*w - 1 in the block's (t, h, w) raster order. Only lax integer
        arithmetic, so it lowers inside Pallas kernels (Triton and Mosaic GPU) as in plain JAX.
        """
        (frames, rows, cols), (ct, ch, cw) = self.latent, self.chunk
        _, nh, nw = self.blocks
        conditions = []
        if frames % ct:  # real frames of this block, times the tokens of one frame of it
            real_frames = frames - lax.div(block, jnp.int32(nh * nw)) * ct
            conditions.append(positions < real_frames * (ch * cw))
        if rows % ch:
            real_rows = rows - lax.rem(lax.div(block, jnp.int32(nw)), jnp.int32(nh)) * ch
            conditions.append(lax.rem(positions, jnp.int32(ch * cw)) < real_rows * cw)
        if cols % cw:
            real_cols = cols - lax.rem(block, jnp.int32(nw)) * cw
            conditions.append(lax.rem(positions, jnp.int32(cw)) < real_cols)
        return conditions


def mask_padded_keys(logits: jax.Array, padding: GridPadding | None, block: jax.Array, positions: jax.Array) -> jax.Array:
    """logits with -inf where key block `block`'s token at `positions` (broadcast against logits) is padding.

    logits unchanged where `padding` is None (the chunks divide the key grid).
    """
    if padding is None:
        return logits
    for real in padding.real_key_conditions(block, positions):
        logits = jnp.where(real, logits, -jnp.inf)
    return logits
