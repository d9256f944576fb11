"""Spatial tiling with overlap blending: the assembly against a plain transcription of the original's
algorithm, and tiled against untiled encode/decode on frames larger than one tile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longcat_jax.errors import ConfigError
from longcat_jax.models.vae import TilingConfig, VAEConfig, random_vae
from longcat_jax.models.vae.autoencoder import decode_frames, encode_moments
from longcat_jax.models.vae.tiling import tiled_apply

SCALE = 4  # output pixels per input pixel of the stand-in tile functions


def _upsample(tile):
    return jnp.repeat(jnp.repeat(tile, SCALE, axis=2), SCALE, axis=3)


def _tile_dependent(tile):
    """Depends on the whole tile, so neighbouring tiles disagree on their overlap."""
    return _upsample(tile) + jnp.mean(tile, axis=(2, 3), keepdims=True)


def _reference_tiling(fn, x, tile, stride, out_stride, blend, out_size):
    """The original's tiled decode, step by step: all tiles first, then in-place blends, top and left."""
    x = np.asarray(x)
    grid = [
        [np.array(fn(jnp.asarray(x[:, :, i : i + tile[0], j : j + tile[1]]))) for j in range(0, x.shape[3], stride[1])]
        for i in range(0, x.shape[2], stride[0])
    ]
    rows = []
    for i, row in enumerate(grid):
        pieces = []
        for j, current in enumerate(row):
            if i > 0:
                above = grid[i - 1][j]
                extent = min(above.shape[2], current.shape[2], blend[0])
                for y in range(extent):
                    current[:, :, y] = above[:, :, y - extent] * (1 - y / extent) + current[:, :, y] * (y / extent)
            if j > 0:
                left = row[j - 1]
                extent = min(left.shape[3], current.shape[3], blend[1])
                for c in range(extent):
                    current[:, :, :, c] = left[:, :, :, c - extent] * (1 - c / extent) + current[:, :, :, c] * (c / extent)
            pieces.append(current[:, :, : out_stride[0], : out_stride[1]])
        rows.append(np.concatenate(pieces, axis=3))
    return np.concatenate(rows, axis=2)[:, :, : out_size[0], : out_size[1]]


GEOMETRY = dict(tile_in=(8, 8), stride_in=(6, 6), stride_out=(24, 24), blend_out=(8, 8))


@pytest.mark.parametrize("height,width", [(14, 17), (8, 20), (5, 9)])
def test_blending_matches_the_original_algorithm(height, width):
    x = jax.random.normal(jax.random.key(height), (1, 2, height, width, 3))
    out_size = (height * SCALE, width * SCALE)
    got = tiled_apply(_tile_dependent, x, out_size=out_size, **GEOMETRY)
    want = _reference_tiling(
        _tile_dependent, x, GEOMETRY["tile_in"], GEOMETRY["stride_in"], GEOMETRY["stride_out"], GEOMETRY["blend_out"], out_size
    )
    assert got.shape == (1, 2, *out_size, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_local_function_is_unchanged_by_tiling():
    """Where tiles agree on their overlap, blending must give back exactly the untiled result."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 15, 13, 2))
    got = tiled_apply(_upsample, x, out_size=(15 * SCALE, 13 * SCALE), **GEOMETRY)
    np.testing.assert_allclose(got, _upsample(x), rtol=1e-6, atol=1e-6)


def test_tiling_switch_and_geometry_checks():
    config = TilingConfig(auto_above_pixels=100 * 100)
    assert config.use_tiling(None, 100, 101) and not config.use_tiling(None, 100, 100)
    assert config.use_tiling(True, 8, 8) and not config.use_tiling(False, 1000, 1000)
    with pytest.raises(ConfigError, match="multiple of 8"):
        TilingConfig(tile_height=100)
    with pytest.raises(ConfigError, match="strides"):
        TilingConfig(stride_width=512)


SMALL_TILES = TilingConfig(tile_height=64, tile_width=64, stride_height=48, stride_width=48)
TINY = VAEConfig(base_dim=4, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                 latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)


@pytest.fixture(scope="module")
def vae():
    return random_vae(TINY, seed=1, tiling=SMALL_TILES)


def test_tiled_decode_blends_per_tile_decodes_like_the_original(vae):
    """A 48x112 frame (latent 6x14) is three 64-pixel tiles wide: each latent tile (8 wide, every 6)
    is decoded alone and blended over 16 pixels exactly as the original's tiled decode, then clamped."""
    latents = jax.random.normal(jax.random.key(2), (1, TINY.z_dim, 2, 6, 14))
    tiled = vae.decode(latents, tiling=True)
    assert tiled.shape == (1, 3, 5, 48, 112)
    want = _reference_tiling(
        lambda tile: decode_frames(vae, tile), jnp.moveaxis(latents, 1, -1),
        tile=(8, 8), stride=(6, 6), out_stride=(48, 48), blend=(16, 16), out_size=(48, 112),
    )
    np.testing.assert_allclose(tiled, np.moveaxis(np.clip(want, -1, 1), -1, 1), rtol=1e-5, atol=1e-5)


def test_tiled_encode_blends_per_tile_encodes_like_the_original(vae):
    """Pixel tiles of 64 every 48 are encoded alone and blended over 2 latent pixels."""
    video = jax.random.uniform(jax.random.key(3), (1, 3, 5, 48, 112), minval=-1, maxval=1)
    tiled = vae.encode(video, tiling=True)
    assert tiled.mean.shape == (1, TINY.z_dim, 2, 6, 14)
    want = _reference_tiling(
        lambda tile: encode_moments(vae, tile), jnp.moveaxis(video, 1, -1),
        tile=(64, 64), stride=(48, 48), out_stride=(6, 6), blend=(2, 2), out_size=(6, 14),
    )
    want = np.moveaxis(want, -1, 1)
    np.testing.assert_allclose(tiled.mean, want[:, : TINY.z_dim], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tiled.logvar, np.clip(want[:, TINY.z_dim :], -30, 20), rtol=1e-5, atol=1e-5)
