"""`resolve_bsa`, the one place a stage's BSA is decided: the stage defaults, what was asked, one-frame latents,
the one log line per stage; and the chunk checks against the token grid."""

import dataclasses
import logging
from pathlib import Path

import pytest

from kernels import BSAParams
from longcat_jax.bsa_config import RELEASED_PARAMS, read_bsa_config
from longcat_jax.errors import InputError
from longcat_jax.pipelines.bsa import STAGE_DEFAULT, Stage, check_bsa_grids, resolve_bsa
from longcat_jax.pipelines.options import PlanContext
from longcat_jax.presets import TINY_DEFAULTS, TINY_DIT_CONFIG

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "bsa"
FAST = BSAParams(sparsity=0.96875)
ON_IN_CONFIG = dataclasses.replace(TINY_DIT_CONFIG, enable_bsa=True)  # bsa_params: sparsity 0.75
NO_PARAMS = dataclasses.replace(TINY_DIT_CONFIG, bsa_params=None)


def _resolved(caplog, stage, config, requested, latent_frames=8):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="longcat_jax.pipelines.bsa"):
        params = resolve_bsa(stage, config, requested, latent_frames=latent_frames)
    assert len(caplog.records) == 1  # one line per stage
    return params, caplog.records[0]


@pytest.mark.parametrize("stage", [Stage.T2V, Stage.I2V, Stage.CONTINUATION])
def test_generation_stages_follow_the_dit_config(caplog, stage):
    params, record = _resolved(caplog, stage, TINY_DIT_CONFIG, STAGE_DEFAULT)
    assert params is None
    assert record.getMessage() == f"BSA off for {stage.value}: dense attention (dit/config.json has enable_bsa false)"
    params, record = _resolved(caplog, stage, ON_IN_CONFIG, STAGE_DEFAULT)
    assert params == TINY_DIT_CONFIG.bsa_params
    assert record.getMessage() == (
        f'BSA on for {stage.value}: {{"sparsity": 0.75, "cdf_threshold": null, "chunk_3d_shape_q": [4, 4, 4], '
        '"chunk_3d_shape_k": [4, 4, 4]} (dit/config.json has enable_bsa true)'
    )


def test_refinement_runs_bsa_with_the_checkpoints_params_or_the_released_ones(caplog):
    params, record = _resolved(caplog, Stage.REFINE, TINY_DIT_CONFIG, STAGE_DEFAULT)
    assert params == TINY_DIT_CONFIG.bsa_params  # on although enable_bsa is false, as the original's refinement
    assert record.getMessage().endswith("(the refinement default: on, with the checkpoint's bsa_params)")
    params, record = _resolved(caplog, Stage.REFINE, NO_PARAMS, STAGE_DEFAULT)
    assert params == RELEASED_PARAMS
    assert record.getMessage().endswith("(the refinement default: on, with the released bsa_params)")


@pytest.mark.parametrize("stage", list(Stage))
def test_what_was_asked_wins(caplog, stage):
    params, record = _resolved(caplog, stage, ON_IN_CONFIG, FAST)
    assert params == FAST and "(as asked" in record.getMessage()
    params, record = _resolved(caplog, stage, ON_IN_CONFIG, None)
    assert params is None
    assert record.getMessage().startswith(f"BSA off for {stage.value}: dense attention (as asked")
    assert record.levelno == (logging.WARNING if stage is Stage.REFINE else logging.INFO)


def test_one_latent_frame_skips_bsa_and_says_so(caplog):
    for stage, config, requested in ((Stage.T2V, ON_IN_CONFIG, STAGE_DEFAULT), (Stage.REFINE, TINY_DIT_CONFIG, FAST)):
        params, record = _resolved(caplog, stage, config, requested, latent_frames=1)
        assert params is None
        assert record.getMessage() == (
            f"BSA skipped for {stage.value}: one latent frame (BSA applies to videos of more than one latent frame)"
        )
    params, record = _resolved(caplog, Stage.T2V, TINY_DIT_CONFIG, STAGE_DEFAULT, latent_frames=1)
    assert params is None and record.getMessage().startswith("BSA off for t2v")  # off anyway: no skip to report


def test_plan_context_asks_the_task_first_then_the_pipeline(caplog):
    context = PlanContext(TINY_DEFAULTS, TINY_DIT_CONFIG, bsa=FAST)
    with caplog.at_level(logging.INFO, logger="longcat_jax.pipelines.bsa"):
        assert context.stage_bsa(Stage.T2V, STAGE_DEFAULT, 4) == FAST
        assert context.stage_bsa(Stage.T2V, None, 4) is None
        assert PlanContext(TINY_DEFAULTS, TINY_DIT_CONFIG).stage_bsa(Stage.T2V, STAGE_DEFAULT, 4) is None


def test_token_grid_checks_of_the_presets():
    balanced = read_bsa_config(PRESETS / "config_720p_balanced.json")
    long_video = read_bsa_config(PRESETS / "config_long_video.json")
    check_bsa_grids(balanced, (48, 44, 80))  # refinement 720p, frames doubled
    check_bsa_grids(long_video, (24, 44, 80))
    check_bsa_grids(balanced, (1, 30, 52))  # one latent frame: BSA does not apply
    check_bsa_grids(read_bsa_config(PRESETS / "config_480p_no_bsa.json"), (24, 30, 52))
    check_bsa_grids(balanced, (24, 30, 52))  # 480p tokens: 30 rows padded to whole chunks inside the attention
    longer_keys = BSAParams(chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(8, 4, 4))
    check_bsa_grids(longer_keys, (24, 44, 80), num_cond_latents=4, kv_cache=True)  # 4 cached frames, padded to 8
    with pytest.raises(InputError, match="BSA cannot run"):  # every input frame a condition: no frame to generate
        check_bsa_grids(balanced, (4, 8, 8), num_cond_latents=4)
