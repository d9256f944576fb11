"""Which block-sparse attention (BSA) each denoising stage runs: one resolver, one log line per stage, and the
check of the token grids it attends over (any grid of positive sides; the padding to whole chunks is logged).

A stage's BSA is a `kernels.BSAParams` (on, with those parameters) or None (dense attention). `resolve_bsa` is the
one place that decides it, from three things:
- what was asked for the stage (a `--bsa-config` file or a task's `bsa` option), which wins when given;
- else the stage's default: generation stages follow the checkpoint's `dit/config.json` (`enable_bsa`, off in the
  released model); the refinement runs BSA on with the checkpoint's `bsa_params`, or the released values when it
  has none, as the original's refinement does;
- BSA is skipped where the stage's latents have one frame (the DiT attends densely there, as the original).
A `BSAOverride` (`--bsa-sparsity`, `--bsa-cdf-threshold`) replaces values of what a stage resolves to, where it
runs BSA. It logs its decision in one line that names the stage and the reason, so `2>&1 | grep -i bsa` shows every
stage.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from collections.abc import Sequence

from kernels import BSAConfigError, BSAParams, GridPadding
from longcat_jax.bsa_config import RELEASED_PARAMS, params_to_json
from longcat_jax.errors import InputError
from longcat_jax.models.dit.config import DiTConfig

logger = logging.getLogger(__name__)


class StageDefault(enum.Enum):
    """The type of `STAGE_DEFAULT`."""

    STAGE_DEFAULT = "the stage's default"


# "Nothing was asked for this stage": resolve_bsa applies the stage's default (None would mean "BSA off").
STAGE_DEFAULT = StageDefault.STAGE_DEFAULT


@dataclasses.dataclass(frozen=True)
class BSAOverride:
    """A stage's BSA request with some `bsa_params` values replaced (the CLI's `--bsa-sparsity` and
    `--bsa-cdf-threshold`): `resolve_bsa` resolves `base` as any request, then, where that runs BSA, replaces the
    values of `changes` ((key, value) pairs; None turns that selection rule off); `source` names them in the log.
    `STAGE_DEFAULT` as `base` means the stage's default (a pipeline's `bsa_config` is not consulted)."""

    base: BSAParams | None | StageDefault
    changes: tuple[tuple[str, float | None], ...]
    source: str


BSARequest = BSAParams | None | StageDefault | BSAOverride


class Stage(enum.Enum):
    """A denoising stage, as the log names it."""

    T2V = "t2v"
    I2V = "i2v"
    CONTINUATION = "continuation"
    REFINE = "refinement"


def resolve_bsa(stage: Stage, dit_config: DiTConfig, requested: BSARequest, *, latent_frames: int) -> BSAParams | None:
    """The BSA of one stage whose DiT calls see at most `latent_frames` latent frames (see the module docstring),
    logged in one line. A `BSAOverride`'s values replace those of the BSA its base resolves to."""
    override = requested if isinstance(requested, BSAOverride) else None
    if override is not None:
        requested = override.base
    if requested is not STAGE_DEFAULT:
        params, reason = requested, "as asked (--bsa-config or the task's bsa option)"
    elif stage is Stage.REFINE:
        params = dit_config.bsa_params or RELEASED_PARAMS
        source = "the checkpoint's bsa_params" if dit_config.bsa_params else "the released bsa_params"
        reason = f"the refinement default: on, with {source}"
    else:
        params = dit_config.bsa_params if dit_config.enable_bsa else None
        reason = f"dit/config.json has enable_bsa {str(dit_config.enable_bsa).lower()}"
    if override is not None and params is not None:
        params = _overridden(stage, params, override)
        reason += f"; {override.source}"
    elif override is not None:
        reason += f"; {override.source} applies only to stages that run BSA"
    if params is not None and latent_frames <= 1:
        logger.info("BSA skipped for %s: one latent frame (BSA applies to videos of more than one latent frame)",
                    stage.value)
        return None
    if params is None:
        log = logger.warning if stage is Stage.REFINE else logger.info
        log("BSA off for %s: dense attention (%s)", stage.value, reason)
    else:
        logger.info("BSA on for %s: %s (%s)", stage.value, json.dumps(params_to_json(params)), reason)
    return params


def _overridden(stage: Stage, params: BSAParams, override: BSAOverride) -> BSAParams:
    """`params` with the override's values, checked by the same rules as a config file's."""
    try:
        return dataclasses.replace(params, **dict(override.changes))
    except BSAConfigError as err:
        raise InputError(
            f"BSA of the {stage.value} stage with {override.source}: {err} (the stage's bsa_params before the "
            f"override: {json.dumps(params_to_json(params))})"
        ) from err


def check_bsa_grids(
    bsa: BSAParams | None,
    token_grid: Sequence[int],
    *,
    num_cond_latents: int = 0,
    kv_cache: bool = False,
) -> None:
    """Refuses, before any compute, token grids BSA cannot attend over, and logs those it pads to whole chunks.

    Any chunk shape fits a grid of positive sides: where it does not divide the grid, the attention pads the grid to
    whole chunks and masks the padding out (`kernels.GridPadding`; the result is that of the real tokens alone).
    Refused: a grid with no tokens along a side (condition frames as many as the input's frames).
    token_grid: (T, H, W) tokens of the DiT input (cached condition frames not included). With condition frames in
    the input, attention splits into condition-over-condition and noisy-over-all, each block-sparse when the input
    has more than one frame; with a KV cache, the cache-building call (condition frames alone) and the noisy
    frames over condition + noisy keys are checked.
    """
    if bsa is None:
        return
    frames, height, width = (int(v) for v in token_grid)
    cond = (num_cond_latents, height, width)
    if kv_cache:
        if num_cond_latents > 1:
            _check_chunks(bsa, cond, cond)
        if frames > 1:
            _check_chunks(bsa, (frames, height, width), (num_cond_latents + frames, height, width))
    elif frames > 1 and num_cond_latents:
        _check_chunks(bsa, cond, cond)
        _check_chunks(bsa, (frames - num_cond_latents, height, width), (frames, height, width))
    elif frames > 1:
        _check_chunks(bsa, (frames, height, width), (frames, height, width))


def _check_chunks(bsa: BSAParams, grid_q: tuple[int, int, int], grid_k: tuple[int, int, int]) -> None:
    """Refuses grids of one BSA call (queries over keys) that have no tokens along a side; logs their padding."""
    try:
        padding_q = GridPadding.of(grid_q, bsa.chunk_3d_shape_q, what="queries")
        padding_k = GridPadding.of(grid_k, bsa.chunk_3d_shape_k, what="keys")
    except BSAConfigError as err:
        raise InputError(
            f"BSA cannot run on this video size: {err}. The token grid is (latent frames, height/16, width/16) of "
            "the frames attended over; give more frames than condition frames (--num-frames, --num-cond-frames), "
            "or turn BSA off (--bsa-config configs/bsa/config_480p_no_bsa.json)"
        ) from err
    if padding_q.needed or padding_k.needed:
        logger.info(
            "BSA pads token grids to whole chunks (padding masked out): queries %s -> %s in %s chunks (%.1f%% "
            "padding), keys %s -> %s in %s chunks (%.1f%% padding)",
            padding_q.latent, padding_q.padded, padding_q.chunk, 100 * padding_q.padded_fraction,
            padding_k.latent, padding_k.padded, padding_k.chunk, 100 * padding_k.padded_fraction,
        )
