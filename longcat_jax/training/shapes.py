"""Sizes: the frame size a clip trains at, the latent and token grids that follow, and the BSA checks on them.

A clip trains at the fixed `data.height` x `data.width`, or at the bucket of `data.resolution`'s table (the
original's, as i2v uses them) nearest its aspect ratio, scaled by the model's size scale with sides kept
multiples of 16. Clips of one bucket share batches; each bucket compiles the step once.
"""

from __future__ import annotations

from collections.abc import Iterable

from kernels import BSAConfigError, BSAParams, chunk_grid
from longcat_jax.errors import ConfigError
from longcat_jax.pipelines.buckets import VAE_TEMPORAL_FACTOR
from longcat_jax.pipelines.geometry import scaled_bucket
from longcat_jax.training.config import TrainConfig
from longcat_jax.training.models import ModelSizes

VAE_SPATIAL_FACTOR = 8
PATCH_SIDE = 2  # the DiT's spatial patch (1, 2, 2)


def clip_size(config: TrainConfig, sizes: ModelSizes, height: int, width: int) -> tuple[int, int]:
    """(height, width) a clip of this frame size trains at."""
    if config.data.height:
        return config.data.height, config.data.width
    return scaled_bucket(height, width, sizes.size_scale, config.data.resolution)


def latent_frames(num_frames: int) -> int:
    """Latent frames of a 1 + 4k frame clip (93 -> 24)."""
    return (num_frames - 1) // VAE_TEMPORAL_FACTOR + 1


def num_cond_latents(config: TrainConfig) -> int:
    """Leading latent frames kept clean: 0 (t2v), 1 (i2v), those of the condition frames (continuation)."""
    cond = config.task.cond_video_frames()
    return latent_frames(cond) if cond else 0


def token_grid(latent_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(T, H, W) DiT tokens of a latent (T, h, w)."""
    t, h, w = latent_shape
    return t, h // PATCH_SIDE, w // PATCH_SIDE


def check_bsa_tiling(bsa: BSAParams | None, latent_shapes: Iterable[tuple[int, int, int]], cond_latents: int) -> None:
    """Refuses BSA chunk shapes that do not tile a token grid the DiT will attend over, before any compute.

    Without condition frames: the whole grid. With them: condition over condition, and the generated frames over
    all. Single-frame latents attend densely (as the original) and need no check.
    """
    if bsa is None:
        return
    for shape in sorted(set(latent_shapes)):
        frames, height, width = token_grid(shape)
        if frames <= 1:
            continue
        if cond_latents:
            pairs = [((cond_latents, height, width),) * 2, ((frames - cond_latents, height, width), (frames, height, width))]
        else:
            pairs = [((frames, height, width),) * 2]
        try:
            for grid_q, grid_k in pairs:
                chunk_grid(grid_q, bsa.chunk_3d_shape_q, what="queries")
                chunk_grid(grid_k, bsa.chunk_3d_shape_k, what="keys")
        except BSAConfigError as err:
            pixels = (height * PATCH_SIDE * VAE_SPATIAL_FACTOR, width * PATCH_SIDE * VAE_SPATIAL_FACTOR)
            raise ConfigError(
                f"BSA cannot train at {pixels[0]}x{pixels[1]} with {shape[0]} latent frames "
                f"({cond_latents} of them conditions): {err}. Pick 'data.height'/'data.width'/'data.num_frames' "
                "whose token grid (latent frames, height/16, width/16) the chunks divide, other 'bsa.bsa_params' "
                "chunk shapes, or 'bsa': {\"enable_bsa\": false}"
            ) from err
