"""The Wan 2.1 video VAE (`AutoencoderKLWan`): encode videos to latent distributions, decode latents to videos.

Public layouts are the original's, channels first: video `[B, C, F, H, W]` in [-1, 1] with
F = 1 + 4k, latents `[B, z_dim, 1 + k, H/8, W/8]`. Inside, activations are channels-last.

Time is processed causally in chunks, as the original: the first frame (first latent) alone, then
4 frames (1 latent) at a time, with each causal convolution's last input frames carried from one
chunk to the next. The chunk loop is a `lax.scan` with the caches as carry, so it compiles once
and holds one chunk's activations at a time. Large frames are additionally cut into overlapping
spatial tiles (see `tiling.py`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from longcat_jax.errors import InputError
from longcat_jax.models.vae.chunking import causal_chunks
from longcat_jax.models.vae.config import FRAMES_PER_CHUNK, VAEConfig
from longcat_jax.models.vae.decoder import Decoder
from longcat_jax.models.vae.encoder import Encoder
from longcat_jax.models.vae.tiling import TilingConfig, tiled_apply


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LatentDistribution:
    """Diagonal Gaussian over latents `[B, z_dim, T, h, w]` (float32); logvar clamped to [-30, 20] as the original."""

    mean: jax.Array
    logvar: jax.Array

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def mode(self) -> jax.Array:
        return self.mean

    def sample(self, key: jax.Array) -> jax.Array:
        """mean + std * N(0, 1), seeded by `key`."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)


_STATIC = ("graphdef", "latent_chunk", "frame_group")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _encode_moments(graphdef, state, video: jax.Array, latent_chunk: int, frame_group: int | None) -> jax.Array:
    model = nnx.merge(graphdef, state)
    step = functools.partial(model.encoder, frame_group=frame_group)
    moments = causal_chunks(step, video.astype(model.dtype), FRAMES_PER_CHUNK * latent_chunk)
    return model.quant(moments).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _decode_frames(graphdef, state, latents: jax.Array, latent_chunk: int, frame_group: int | None) -> jax.Array:
    model = nnx.merge(graphdef, state)
    step = functools.partial(model.decoder, frame_group=frame_group)
    return causal_chunks(step, model.post_quant(latents.astype(model.dtype)), latent_chunk)


def encode_moments(
    model: WanVAE, video: jax.Array, *, latent_chunk: int = 1, frame_group: int | None = 1
) -> jax.Array:
    """Untiled, channels-last encode: video `[B, F, H, W, C]` -> float32 moments `[B, 1 + (F-1)/4, H/8, W/8, 2 z_dim]`.

    The moments are (mean, logvar) concatenated on the last axis, before the logvar clamp. This is
    what one spatial tile goes through; `WanVAE.encode` adds checks, tiling and the public layout.
    """
    graphdef, state = nnx.split(model)
    return _encode_moments(
        graphdef, state, video, latent_chunk=_check_chunk(latent_chunk), frame_group=_check_group(frame_group)
    )


def decode_frames(
    model: WanVAE, latents: jax.Array, *, latent_chunk: int = 1, frame_group: int | None = 1
) -> jax.Array:
    """Untiled, channels-last decode: latents `[B, T, h, w, z_dim]` -> unclamped video `[B, 1 + 4 (T-1), 8h, 8w, C]`.

    In the model dtype; what one spatial tile goes through (`WanVAE.decode` blends and clamps).
    """
    graphdef, state = nnx.split(model)
    return _decode_frames(
        graphdef, state, latents, latent_chunk=_check_chunk(latent_chunk), frame_group=_check_group(frame_group)
    )


class WanVAE(nnx.Module):
    """AutoencoderKLWan (Wan 2.1): 8x spatial, 4x temporal compression, `z_dim` latent channels.

    `dtype` is the compute dtype (norms and softmax run in float32 regardless), `param_dtype` the
    storage dtype of the weights. `tiling` holds the tile geometry and the automatic switch.
    """

    def __init__(
        self,
        config: VAEConfig,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        tiling: TilingConfig = TilingConfig(),
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.config = config
        self.dtype = dtype
        self.tiling = tiling
        self.encoder = Encoder(config, **kw)
        self.quant = nnx.Linear(2 * config.z_dim, 2 * config.z_dim, **kw)
        self.post_quant = nnx.Linear(config.z_dim, config.z_dim, **kw)
        self.decoder = Decoder(config, **kw)

    @property
    def spatial_factor(self) -> int:
        return self.config.scale_factor_spatial

    def encode(
        self,
        video: jax.Array,
        *,
        tiling: bool | None = None,
        latent_chunk: int = 1,
        frame_group: int | None = 1,
    ) -> LatentDistribution:
        """video `[B, C, F, H, W]` in [-1, 1], F = 1 + 4k, H and W multiples of 8 -> latent distribution.

        `tiling`: True/False forces spatial tiling on/off, None switches it on above
        `self.tiling.auto_above_pixels`. `latent_chunk`: latent frames per causal chunk (1 = the
        original's 4 video frames). `frame_group`: frames per step in the full-resolution layers
        (None: the whole chunk). Neither changes the result; larger values need more memory.
        """
        self._check_video(video)
        height, width = video.shape[3], video.shape[4]
        video = jnp.moveaxis(jnp.asarray(video), 1, -1)  # [B, F, H, W, C]
        encode = functools.partial(encode_moments, self, latent_chunk=latent_chunk, frame_group=frame_group)
        if self.tiling.use_tiling(tiling, height, width):
            t, f = self.tiling, self.spatial_factor
            moments = tiled_apply(
                encode,
                video,
                tile_in=(t.tile_height, t.tile_width),
                stride_in=(t.stride_height, t.stride_width),
                stride_out=(t.stride_height // f, t.stride_width // f),
                blend_out=((t.tile_height - t.stride_height) // f, (t.tile_width - t.stride_width) // f),
                out_size=(height // f, width // f),
            )
        else:
            moments = encode(video)
        moments = jnp.moveaxis(moments, -1, 1)  # [B, 2 z_dim, T, h, w]
        mean, logvar = jnp.split(moments, 2, axis=1)
        return LatentDistribution(mean=mean, logvar=jnp.clip(logvar, -30.0, 20.0))

    def decode(
        self,
        latents: jax.Array,
        *,
        tiling: bool | None = None,
        latent_chunk: int = 1,
        frame_group: int | None = 1,
    ) -> jax.Array:
        """latents `[B, z_dim, T, h, w]` -> video `[B, C, 1 + 4 (T-1), 8h, 8w]` clamped to [-1, 1] (model dtype).

        `tiling`, `latent_chunk` and `frame_group` as in `encode`. With tiling the tiles are blended before the
        clamp (the original's tiled path returns the blend unclamped).
        """
        self._check_latents(latents)
        f = self.spatial_factor
        height, width = latents.shape[3] * f, latents.shape[4] * f
        latents = jnp.moveaxis(jnp.asarray(latents), 1, -1)  # [B, T, h, w, z]
        decode = functools.partial(decode_frames, self, latent_chunk=latent_chunk, frame_group=frame_group)
        if self.tiling.use_tiling(tiling, height, width):
            t = self.tiling
            video = tiled_apply(
                decode,
                latents,
                tile_in=(t.tile_height // f, t.tile_width // f),
                stride_in=(t.stride_height // f, t.stride_width // f),
                stride_out=(t.stride_height, t.stride_width),
                blend_out=(t.tile_height - t.stride_height, t.tile_width - t.stride_width),
                out_size=(height, width),
            )
        else:
            video = decode(latents)
        return jnp.moveaxis(jnp.clip(video, -1.0, 1.0), -1, 1)

    def normalize(self, latents: jax.Array) -> jax.Array:
        """(latents - latents_mean) / latents_std per channel: what the DiT works on."""
        mean, inv_std = self._stats(latents.ndim)
        return ((latents - mean) * inv_std).astype(latents.dtype)

    def denormalize(self, latents: jax.Array) -> jax.Array:
        """Inverse of `normalize`: DiT latents back to VAE latents for `decode`."""
        mean, inv_std = self._stats(latents.ndim)
        return (latents / inv_std + mean).astype(latents.dtype)

    def _stats(self, ndim: int) -> tuple[jax.Array, jax.Array]:
        if ndim != 5:
            raise InputError(f"latents must be [B, {self.config.z_dim}, T, h, w]; got {ndim} dimensions")
        shape = (1, self.config.z_dim, 1, 1, 1)
        mean = jnp.asarray(self.config.latents_mean, jnp.float32).reshape(shape)
        inv_std = 1.0 / jnp.asarray(self.config.latents_std, jnp.float32).reshape(shape)
        return mean, inv_std

    def _check_video(self, video) -> None:
        if video.ndim != 5 or video.shape[1] != self.config.in_channels:
            raise InputError(
                f"video must be [B, {self.config.in_channels}, F, H, W] (channels first, values in [-1, 1]); "
                f"got shape {tuple(video.shape)}"
            )
        frames, height, width = video.shape[2:]
        if frames < 1 or (frames - 1) % FRAMES_PER_CHUNK:
            lower = 1 + max(frames - 1, 0) // FRAMES_PER_CHUNK * FRAMES_PER_CHUNK
            raise InputError(
                f"the VAE encodes 1 + 4k frames (1, 5, 9, ..., 93); got {frames}: use {lower} or "
                f"{lower + FRAMES_PER_CHUNK} frames"
            )
        f = self.spatial_factor
        if height % f or width % f:
            raise InputError(f"video height and width must be multiples of {f}; got {height}x{width}")

    def _check_latents(self, latents) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.config.z_dim or latents.shape[2] < 1:
            raise InputError(
                f"latents must be [B, {self.config.z_dim}, T, h, w] with T >= 1 (T latent frames decode to "
                f"1 + 4 (T - 1) video frames); got shape {tuple(latents.shape)}"
            )


def _check_chunk(latent_chunk: int) -> int:
    if not isinstance(latent_chunk, int) or latent_chunk < 1:
        raise InputError(f"latent_chunk must be a positive integer; got {latent_chunk!r}")
    return latent_chunk


def _check_group(frame_group: int | None) -> int | None:
    if frame_group is not None and (not isinstance(frame_group, int) or frame_group < 1):
        raise InputError(f"frame_group must be a positive integer or None; got {frame_group!r}")
    return frame_group
