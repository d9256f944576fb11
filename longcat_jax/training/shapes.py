"""Sizes: the frame size a clip trains at, the latent and token grids that follow, and the BSA checks on them
(the grids BSA can attend over, the sizes and platform its Pallas backends can run).

A clip trains at the fixed `data.height` x `data.width`, or at the bucket of `data.resolution`'s table (the
original's, as i2v uses them) nearest its aspect ratio, scaled by the model's size scale with sides kept
multiples of 16. Clips of one bucket share batches; each bucket compiles the step once.
"""

from __future__ import annotations

from collections.abc import Iterable

from kernels import BSAConfigError, BSAInputError, BSAParams, check_pallas_shapes, resolve_backend
from longcat_jax.errors import ConfigError, InputError
from longcat_jax.pipelines.bsa import check_bsa_grids
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
    """Refuses, before any compute, buckets whose token grid BSA cannot attend over (the generation check,
    `pipelines.bsa.check_bsa_grids`: grids the chunks do not divide are padded inside the attention, so only a
    grid with no frame to generate is refused). Single-frame latents attend densely (as the original)."""
    if bsa is None:
        return
    for shape in sorted(set(latent_shapes)):
        try:
            check_bsa_grids(bsa, token_grid(shape), num_cond_latents=cond_latents)
        except InputError as err:
            height, width = (side * VAE_SPATIAL_FACTOR for side in shape[1:])
            raise ConfigError(
                f"BSA cannot train at {height}x{width} with {shape[0]} latent frames ({cond_latents} of them "
                f"conditions): {err}. Pick more 'data.num_frames' than condition frames, or 'bsa': "
                "{\"enable_bsa\": false}"
            ) from err


def check_bsa_backend(bsa: BSAParams | None, backend: str, head_dim: int) -> None:
    """Refuses, before the DiT loads, a `bsa.backend` this machine or model cannot run. Without it JAX fails deep in
    the first step's compile ('pallas' off a GPU), or the first step's trace refuses the DiT's head size or the
    chunk sizes the Pallas kernels ('pallas', 'pallas_interpret', 'auto' on a GPU) cannot take, both only after
    the DiT has loaded. `head_dim`: the DiT's hidden_size / num_heads."""
    if bsa is None:
        return
    try:
        resolved = resolve_backend(backend)  # refuses 'pallas' off a GPU
    except BSAConfigError as err:
        raise ConfigError(f"'bsa.backend': {err} (or 'auto': the Pallas kernels on a GPU, the reference elsewhere)") from err
    if resolved == "reference":
        return
    try:
        check_pallas_shapes(head_dim, bsa.chunk_size_q, bsa.chunk_size_k)
    except BSAInputError as err:
        kernels = "the Pallas kernels on this GPU" if backend == "auto" else "the Pallas kernels"
        raise ConfigError(
            f"BSA backend {backend!r} runs {kernels}, which cannot train this model with these chunks "
            f"(head_dim {head_dim}, {bsa.chunk_size_q}-token q and {bsa.chunk_size_k}-token k chunks): {err}. In "
            "the config: 'bsa.bsa_params.chunk_3d_shape_q' / 'chunk_3d_shape_k', or 'bsa.backend': 'reference'"
        ) from err
