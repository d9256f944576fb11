"""Which block-sparse attention (BSA) each denoising stage runs: one resolver, one log line per stage, and the
check that the chunks tile the token grids.

A stage's BSA is a `kernels.BSAParams` (on, with those parameters) or None (dense attention). `resolve_bsa` is the
one place that decides it, from three things:
- what was asked for the stage (a `--bsa-config` file or a task's `bsa` option), which wins when given;
- else the stage's default: generation stages follow the checkpoint's `dit/config.json` (`enable_bsa`, off in the
  released model); the refinement runs BSA on with the checkpoint's `bsa_params`, or the released values when it
  has none, as the original's refinement does;
- BSA is skipped where the stage's latents have one frame (the DiT attends densely there, as the original).
It logs its decision in one line that names the stage and the reason, so `2>&1 | grep -i bsa` shows every stage.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Sequence

from kernels import BSAConfigError, BSAParams, chunk_grid
from longcat_jax.bsa_config import RELEASED_PARAMS, params_to_json
from longcat_jax.errors import InputError
from longcat_jax.models.dit.config import DiTConfig

logger = logging.getLogger(__name__)


class StageDefault(enum.Enum):
    """The type of `STAGE_DEFAULT`."""

    STAGE_DEFAULT = "the stage's default"


# "Nothing was asked for this stage": resolve_bsa applies the stage's default (None would mean "BSA off").
STAGE_DEFAULT = StageDefault.STAGE_DEFAULT
BSARequest = BSAParams | None | StageDefault


class Stage(enum.Enum):
    """A denoising stage, as the log names it."""

    T2V = "t2v"
    I2V = "i2v"
    CONTINUATION = "continuation"
    REFINE = "refinement"


def resolve_bsa(stage: Stage, dit_config: DiTConfig, requested: BSARequest, *, latent_frames: int) -> BSAParams | None:
    """The BSA of one stage whose DiT calls see at most `latent_frames` latent frames (see the module docstring),
    logged in one line."""
    if requested is not STAGE_DEFAULT:
        params, reason = requested, "as asked (--bsa-config or the task's bsa option)"
    elif stage is Stage.REFINE:
        params = dit_config.bsa_params or RELEASED_PARAMS
        source = "the checkpoint's bsa_params" if dit_config.bsa_params else "the released bsa_params"
        reason = f"the refinement default: on, with {source}"
    else:
        params = dit_config.bsa_params if dit_config.enable_bsa else None
        reason = f"dit/config.json has enable_bsa {str(dit_config.enable_bsa).lower()}"
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


def check_bsa_grids(
    bsa: BSAParams | None,
    token_grid: Sequence[int],
    *,
    num_cond_latents: int = 0,
    kv_cache: bool = False,
) -> None:
    """Refuses, before any compute, BSA chunk shapes that do not tile the token grids the DiT will attend over.

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
    try:
        chunk_grid(grid_q, bsa.chunk_3d_shape_q, what="queries")
        chunk_grid(grid_k, bsa.chunk_3d_shape_k, what="keys")
    except BSAConfigError as err:
        raise InputError(
            f"BSA cannot run on this video size: {err}. The token grid is (latent frames, height/16, width/16); "
            "pick a size and frame count it divides, a BSA config with other chunk shapes, or turn BSA off "
            "(--bsa-config configs/bsa/config_480p_no_bsa.json)"
        ) from err
