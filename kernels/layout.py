"""Token order: (T, H, W) raster order <-> 3D-chunk order, for [B, S, H, D] arrays.

BSA treats each (t, h, w) chunk of the latent grid as one attention block, so its tokens must be
contiguous. Chunk order lists chunks in (Nt, Nh, Nw) raster order and, inside a chunk, tokens in
(t, h, w) raster order. The permutation helpers let a caller keep tokens in chunk order across
layers and convert only at the ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np

from kernels.errors import BSAConfigError, BSAInputError

Grid = tuple[int, int, int]


def _checked_shapes(latent_shape: Sequence[int], chunk_shape: Sequence[int], what: str) -> tuple[Grid, Grid]:
    """(latent, chunk) as int triples; refuses anything but three positive ints each."""
    latent = tuple(int(n) for n in latent_shape)
    chunk = tuple(int(n) for n in chunk_shape)
    label = f" for {what}" if what else ""
    if len(latent) != 3 or any(n <= 0 for n in latent):
        raise BSAConfigError(f"latent shape{label} must be three positive ints (T, H, W), got {latent_shape!r}")
    if len(chunk) != 3 or any(n <= 0 for n in chunk):
        raise BSAConfigError(f"chunk shape{label} must be three positive ints (t, h, w), got {chunk_shape!r}")
    return latent, chunk


def chunk_grid(latent_shape: Sequence[int], chunk_shape: Sequence[int], *, what: str = "") -> Grid:
    """Chunks along (T, H, W): (T // t, H // h, W // w); refuses chunk shapes that don't divide the grid.

    The reorderings below need whole chunks; `bsa_attention` takes any grid, padding it to whole chunks first
    (`padding.GridPadding`).
    """
    latent, chunk = _checked_shapes(latent_shape, chunk_shape, what)
    bad = [axis for axis, n, c in zip("THW", latent, chunk) if n % c]
    if bad:
        label = f" for {what}" if what else ""
        raise BSAConfigError(
            f"chunk shape {chunk}{label} does not divide the latent grid {latent} along {', '.join(bad)}; "
            "pad the grid to whole chunks first (kernels.GridPadding, as bsa_attention does) or pick a "
            "chunk_3d_shape whose entries divide the grid"
        )
    return (latent[0] // chunk[0], latent[1] // chunk[1], latent[2] // chunk[2])


def padded_chunk_grid(latent_shape: Sequence[int], chunk_shape: Sequence[int], *, what: str = "") -> Grid:
    """Chunks along (T, H, W) once the grid is padded up to whole chunks: (ceil(T / t), ceil(H / h), ceil(W / w))."""
    latent, chunk = _checked_shapes(latent_shape, chunk_shape, what)
    return tuple(-(-n // c) for n, c in zip(latent, chunk, strict=True))


def check_tokens(x: jax.Array, latent_shape: Sequence[int]) -> None:
    if x.ndim != 4:
        raise BSAInputError(f"expected a [B, S, H, D] array, got shape {x.shape}")
    if x.shape[1] != math.prod(latent_shape):
        raise BSAInputError(
            f"sequence length {x.shape[1]} is not the token count {math.prod(latent_shape)} of the latent "
            f"grid {tuple(latent_shape)}"
        )


def to_chunk_order(x: jax.Array, latent_shape: Sequence[int], chunk_shape: Sequence[int]) -> jax.Array:
    """[B, S, H, D] tokens in (T, H, W) raster order -> the same tokens in 3D-chunk order."""
    check_tokens(x, latent_shape)
    nt, nh, nw = chunk_grid(latent_shape, chunk_shape)
    t, h, w = chunk_shape
    b, s, heads, d = x.shape
    x = x.reshape(b, nt, t, nh, h, nw, w, heads, d)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7, 8)  # [B, Nt, Nh, Nw, t, h, w, H, D]
    return x.reshape(b, s, heads, d)


def from_chunk_order(x: jax.Array, latent_shape: Sequence[int], chunk_shape: Sequence[int]) -> jax.Array:
    """[B, S, H, D] tokens in 3D-chunk order -> the same tokens in (T, H, W) raster order."""
    check_tokens(x, latent_shape)
    nt, nh, nw = chunk_grid(latent_shape, chunk_shape)
    t, h, w = chunk_shape
    b, s, heads, d = x.shape
    x = x.reshape(b, nt, nh, nw, t, h, w, heads, d)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7, 8)  # [B, Nt, t, Nh, h, Nw, w, H, D]
    return x.reshape(b, s, heads, d)


def chunk_order_permutation(latent_shape: Sequence[int], chunk_shape: Sequence[int]) -> np.ndarray:
    """Raster index of each chunk-order position: `x[:, perm]` equals `to_chunk_order(x)`. [S] int32."""
    nt, nh, nw = chunk_grid(latent_shape, chunk_shape)
    t, h, w = chunk_shape
    raster = np.arange(math.prod(latent_shape), dtype=np.int32)
    raster = raster.reshape(nt, t, nh, h, nw, w).transpose(0, 2, 4, 1, 3, 5)
    return raster.reshape(-1)


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """The permutation that undoes `perm`: `y[:, inverse_permutation(perm)]` undoes `y = x[:, perm]`."""
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inverse
