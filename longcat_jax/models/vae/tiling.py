"""Spatial tiling with overlap blending, as the original's `tiled_encode` / `tiled_decode`.

A large frame is cut into overlapping tiles, each tile is processed alone (so memory follows the
tile size, not the frame size), and neighbouring results are cross-faded over their overlap with
linear ramps before the overlap is cropped away. Tiles are visited row by row; each tile is blended
with the already blended tile above and the already blended tile to its left, exactly in the
original's order, and only the previous row is kept.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from longcat_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TilingConfig:
    """Tile geometry in video pixels (the original's defaults) and when tiling switches on by itself.

    `auto_above_pixels`: with `tiling=None` at the API, frames with more than this many pixels
    (H * W of the video) are tiled. The default keeps 1280x720 (the refinement stage's size) and
    everything below untiled, like the original pipeline, whose peak per 4-frame chunk at that
    size is a few GB; larger frames are tiled.
    """

    tile_height: int = 256
    tile_width: int = 256
    stride_height: int = 192
    stride_width: int = 192
    auto_above_pixels: int = 1280 * 720

    def __post_init__(self):
        for name in ("tile_height", "tile_width", "stride_height", "stride_width"):
            if getattr(self, name) <= 0 or getattr(self, name) % 8:
                raise ConfigError(f"tiling {name}={getattr(self, name)} must be a positive multiple of 8")
        if self.stride_height > self.tile_height or self.stride_width > self.tile_width:
            raise ConfigError("tiling strides must not exceed the tile size (tiles must touch or overlap)")

    @classmethod
    def square(cls, tile: int, overlap: int = 64) -> TilingConfig:
        """Tiles of `tile` x `tile` pixels overlapping by `overlap`, used at every frame size (a memory plan picks
        the tile for its budget; `longcat_jax.memory.plan`)."""
        return cls(tile_height=tile, tile_width=tile, stride_height=tile - overlap, stride_width=tile - overlap,
                   auto_above_pixels=0)

    def use_tiling(self, tiling: bool | None, height: int, width: int) -> bool:
        """Explicit True/False wins; None tiles when the video frame has more than `auto_above_pixels` pixels."""
        if tiling is None:
            return height * width > self.auto_above_pixels
        return bool(tiling)


@functools.partial(jax.jit, static_argnames=("axis", "extent"))
def _blend(prev: jax.Array, tile: jax.Array, axis: int, extent: int) -> jax.Array:
    """Cross-fades the first `extent` rows/columns of `tile` from the last ones of `prev` (linear ramp)."""
    ramp = jnp.arange(extent, dtype=jnp.float32) / extent
    ramp = ramp.reshape((extent,) + (1,) * (tile.ndim - axis - 1))
    head = jax.lax.slice_in_dim(tile, 0, extent, axis=axis).astype(jnp.float32)
    tail = jax.lax.slice_in_dim(prev, prev.shape[axis] - extent, prev.shape[axis], axis=axis).astype(jnp.float32)
    mixed = (tail * (1 - ramp) + head * ramp).astype(tile.dtype)
    return jax.lax.dynamic_update_slice_in_dim(tile, mixed, 0, axis=axis)


def tiled_apply(
    fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    *,
    tile_in: tuple[int, int],
    stride_in: tuple[int, int],
    stride_out: tuple[int, int],
    blend_out: tuple[int, int],
    out_size: tuple[int, int],
) -> jax.Array:
    """Applies `fn` to overlapping spatial tiles of x `[B, T, H, W, C]` and blends the results.

    Tiles of `tile_in` start every `stride_in` (edge tiles are smaller); each result is blended over
    `blend_out` rows/columns with its upper and left neighbours, cropped to `stride_out`, and the
    assembled result is cropped to `out_size` (H', W').
    """
    height, width = x.shape[2], x.shape[3]
    rows = []
    previous_row: list[jax.Array] = []
    for top in range(0, height, stride_in[0]):
        row: list[jax.Array] = []
        for col, left in enumerate(range(0, width, stride_in[1])):
            tile = fn(x[:, :, top : top + tile_in[0], left : left + tile_in[1]])  # [B, T', h', w', C']
            if previous_row:
                above = previous_row[col]
                extent = min(above.shape[2], tile.shape[2], blend_out[0])
                if extent > 0:
                    tile = _blend(above, tile, axis=2, extent=extent)
            if row:
                extent = min(row[-1].shape[3], tile.shape[3], blend_out[1])
                if extent > 0:
                    tile = _blend(row[-1], tile, axis=3, extent=extent)
            row.append(tile)
        rows.append(jnp.concatenate([t[:, :, : stride_out[0], : stride_out[1]] for t in row], axis=3))
        previous_row = row
    return jnp.concatenate(rows, axis=2)[:, :, : out_size[0], : out_size[1]]
