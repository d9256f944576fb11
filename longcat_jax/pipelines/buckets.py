"""Resolution buckets and frame-count rules of LongCat-Video.

i2v, video continuation and refinement do not take a height and width: they pick the bucket whose aspect ratio
(height / width, the table keys) is closest to the condition image's or video's, from the original's tables.
Sides are multiples of 16 for 480p/720p generation (VAE 8x times patch 2) and of 64 for the 720p refinement bucket
(the refinement stage also needs the 4x4 BSA chunks to tile the token grid). Frame counts must be 1 + 4k (the VAE
compresses time 4x after the first frame); other counts become `n // 4 * 4 + 1`, with a warning, as the original does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from longcat_jax.errors import InputError

logger = logging.getLogger(__name__)

VAE_TEMPORAL_FACTOR = 4
GENERATION_SIDE_MULTIPLE = 16  # VAE spatial 8 x DiT patch 2
REFINE_SIDE_MULTIPLE = 64  # VAE spatial 8 x DiT patch 2 x BSA chunk 4

# height / width -> (height, width), in the original's order (ties go to the earlier entry).
BUCKETS_480P: Mapping[str, tuple[int, int]] = {
    "0.26": (320, 1216), "0.31": (352, 1120), "0.38": (384, 1024), "0.43": (416, 960),
    "0.52": (448, 864), "0.58": (480, 832), "0.67": (512, 768), "0.74": (544, 736),
    "0.86": (576, 672), "0.95": (608, 640), "1.05": (640, 608), "1.17": (672, 576),
    "1.29": (704, 544), "1.35": (736, 544), "1.50": (768, 512), "1.67": (800, 480),
    "1.73": (832, 480), "2.00": (896, 448), "2.31": (960, 416), "2.58": (992, 384),
    "2.75": (1056, 384), "3.09": (1088, 352), "3.70": (1184, 320), "3.80": (1216, 320),
    "3.90": (1248, 320), "4.00": (1280, 320),
}  # fmt: skip

BUCKETS_720P: Mapping[str, tuple[int, int]] = {
    "0.25": (480, 1920), "0.29": (512, 1792), "0.32": (544, 1696), "0.36": (576, 1600),
    "0.40": (608, 1504), "0.49": (672, 1376), "0.54": (704, 1312), "0.59": (736, 1248),
    "0.69": (800, 1152), "0.74": (832, 1120), "0.82": (864, 1056), "0.88": (896, 1024),
    "0.94": (928, 992), "1.00": (960, 960), "1.07": (992, 928), "1.14": (1024, 896),
    "1.22": (1056, 864), "1.31": (1088, 832), "1.35": (1120, 832), "1.44": (1152, 800),
    "1.70": (1248, 736), "2.00": (1344, 672), "2.05": (1376, 672), "2.47": (1504, 608),
    "2.53": (1536, 608), "2.83": (1632, 576), "3.06": (1664, 544), "3.12": (1696, 544),
    "3.62": (1856, 512), "3.93": (1888, 480), "4.00": (1920, 480),
}  # fmt: skip

BUCKETS_720P_SIDE64: Mapping[str, tuple[int, int]] = {
    "0.22": (448, 2048), "0.29": (512, 1792), "0.36": (576, 1600), "0.45": (640, 1408),
    "0.55": (704, 1280), "0.63": (768, 1216), "0.76": (832, 1088), "0.88": (896, 1024),
    "1.00": (960, 960), "1.14": (1024, 896), "1.31": (1088, 832), "1.50": (1152, 768),
    "1.58": (1216, 768), "1.82": (1280, 704), "1.91": (1344, 704), "2.20": (1408, 640),
    "2.30": (1472, 640), "2.67": (1536, 576), "2.89": (1664, 576), "3.62": (1856, 512),
    "3.75": (1920, 512),
}  # fmt: skip

_TABLES: Mapping[tuple[str, int], Mapping[str, tuple[int, int]]] = {
    ("480p", GENERATION_SIDE_MULTIPLE): BUCKETS_480P,
    ("720p", GENERATION_SIDE_MULTIPLE): BUCKETS_720P,
    ("720p", REFINE_SIDE_MULTIPLE): BUCKETS_720P_SIDE64,
}
# the generation bucket tables (--resolution, the training config's data.resolution, sidecars)
RESOLUTIONS = tuple(resolution for resolution, multiple in _TABLES if multiple == GENERATION_SIDE_MULTIPLE)


def bucket_table(resolution: str, side_multiple: int = GENERATION_SIDE_MULTIPLE) -> Mapping[str, tuple[int, int]]:
    """The bucket table for a resolution ('480p' or '720p') and side multiple (16, or 64 for refinement at 720p)."""
    table = _TABLES.get((resolution, side_multiple))
    if table is None:
        known = ", ".join(f"{res} with multiple {mult}" for res, mult in _TABLES)
        raise InputError(f"no bucket table for {resolution} with sides multiple of {side_multiple}; known: {known}")
    return table


def nearest_bucket(
    height: int, width: int, resolution: str, side_multiple: int = GENERATION_SIDE_MULTIPLE
) -> tuple[int, int]:
    """(height, width) of the bucket whose height/width ratio is closest to the given frame's, as the original."""
    if height <= 0 or width <= 0:
        raise InputError(f"condition frame has no pixels ({height}x{width}); give a non-empty image or video")
    ratio = height / width
    table = bucket_table(resolution, side_multiple)
    key = min(table, key=lambda k: abs(float(k) - ratio))
    return table[key]


def refine_bucket(height: int, width: int) -> tuple[int, int]:
    """The 720p refinement bucket (sides multiple of 64) for a stage-1 video of this size, e.g. 480x832 -> 704x1280."""
    return nearest_bucket(height, width, "720p", REFINE_SIDE_MULTIPLE)


def round_num_frames(num_frames: int, temporal_factor: int = VAE_TEMPORAL_FACTOR) -> int:
    """A frame count of the form 1 + 4k: others become `n // 4 * 4 + 1` with a warning (94 -> 93, 92 -> 93), >= 1."""
    if num_frames % temporal_factor != 1:
        rounded = max(num_frames // temporal_factor * temporal_factor + 1, 1)
        logger.warning(
            "num_frames - 1 must be divisible by %d; rounding %d frames to %d", temporal_factor, num_frames, rounded
        )
        return rounded
    return max(num_frames, 1)


def num_latent_frames(num_frames: int, temporal_factor: int = VAE_TEMPORAL_FACTOR) -> int:
    """Latent frames for a 1 + 4k frame video: 93 -> 24."""
    return (num_frames - 1) // temporal_factor + 1


def check_side_multiple(height: int, width: int, side_multiple: int = GENERATION_SIDE_MULTIPLE) -> None:
    """Refuses sizes the VAE and DiT patching cannot take, naming the nearest valid ones."""
    if height <= 0 or width <= 0 or height % side_multiple or width % side_multiple:
        fixed_h = max(side_multiple, round(height / side_multiple) * side_multiple)
        fixed_w = max(side_multiple, round(width / side_multiple) * side_multiple)
        raise InputError(
            f"height and width must be positive multiples of {side_multiple}, got {height}x{width}; "
            f"try {fixed_h}x{fixed_w}"
        )
