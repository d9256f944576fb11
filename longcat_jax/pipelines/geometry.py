"""Token geometry: how a video's pixel size and frame count map to the DiT's (T, H, W) token grid, and the
resolution bucket of a frame at the pipeline's scale."""

from __future__ import annotations

import logging

from longcat_jax.pipelines.buckets import GENERATION_SIDE_MULTIPLE, nearest_bucket
from longcat_jax.presets import PipelineDefaults

LATENT_PATCH = 16  # pixels per DiT token side: VAE 8x times patch 2
# an input whose sides both grow more than this to its bucket is warned of: it conditions the run as a blur
UPSCALE_WARNING = 4.0

logger = logging.getLogger(__name__)


def token_grid(latent_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(T, H, W) tokens of the DiT for `latent_frames` latent frames of a height x width video."""
    return latent_frames, height // LATENT_PATCH, width // LATENT_PATCH


def bucket_for(
    height: int,
    width: int,
    defaults: PipelineDefaults,
    resolution: str = "480p",
    side_multiple: int = GENERATION_SIDE_MULTIPLE,
) -> tuple[int, int]:
    """The bucket for a frame of this size at the run defaults' `size_scale` (see `scaled_bucket`)."""
    return scaled_bucket(height, width, defaults.size_scale, resolution, side_multiple)


def warn_of_upscaled_input(what: str, size: tuple[int, int], bucket: tuple[int, int]) -> None:
    """Warns where an input frame of `size` (height, width) grows more than `UPSCALE_WARNING` times on both sides to
    its `bucket`: a thumbnail (or a wrongly chosen file) then conditions the video as a blur, which the run would not
    otherwise say."""
    factor = min(bucket[0] / size[0], bucket[1] / size[1])
    if factor > UPSCALE_WARNING:
        logger.warning("%s is %dx%d, upscaled %.0fx to the %dx%d bucket: it conditions the video as a blur of itself; "
                       "give a larger one for a sharp start", what, size[1], size[0], factor, bucket[1], bucket[0])


def scaled_bucket(
    height: int,
    width: int,
    size_scale: float,
    resolution: str = "480p",
    side_multiple: int = GENERATION_SIDE_MULTIPLE,
) -> tuple[int, int]:
    """The bucket for a frame of this size: the original's tables, scaled by `size_scale` (the small built-in
    model works at 1/4 of the real sizes), sides kept multiples of `side_multiple`."""
    bucket_h, bucket_w = nearest_bucket(height, width, resolution, side_multiple)
    if size_scale == 1.0:
        return bucket_h, bucket_w
    return (
        max(side_multiple, round(bucket_h * size_scale / side_multiple) * side_multiple),
        max(side_multiple, round(bucket_w * size_scale / side_multiple) * side_multiple),
    )
