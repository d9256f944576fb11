"""JSON BSA configs: the six presets, merging into a DiT config, every refusal, the log lines, grid checks."""

import json
import logging
from pathlib import Path

import pytest

from kernels import BSAParams
from longcat_jax.bsa_config import (
    ENABLE_MESSAGE,
    BSAConfig,
    bsa_from_dit_config,
    load_bsa_config,
    log_bsa,
    merge_into_dit_config,
    parse_bsa_config,
)
from longcat_jax.errors import ConfigError, InputError
from longcat_jax.pipelines.denoise import check_bsa_grids
from longcat_jax.pipelines.pipeline import checkpoint_bsa

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "bsa"
BALANCED = {"sparsity": 0.9375, "cdf_threshold": None, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]}

# name -> (enable_bsa, sparsity, cdf_threshold, chunk shape), as issue 7 lists them
EXPECTED_PRESETS = {
    "config_480p_no_bsa.json": (False, None, None, None),
    "config_720p_quality.json": (True, 0.875, None, (4, 4, 4)),
    "config_720p_balanced.json": (True, 0.9375, None, (4, 4, 4)),
    "config_720p_fast.json": (True, 0.96875, None, (4, 4, 4)),
    "config_720p_adaptive.json": (True, None, 0.98, (4, 4, 4)),
    "config_long_video.json": (True, 0.9375, None, (8, 4, 4)),
}


@pytest.fixture()
def dit_config(fixtures_dir):
    return json.loads((fixtures_dir / "dit" / "config.json").read_text())


def test_presets_have_the_listed_values():
    assert sorted(p.name for p in PRESETS.glob("*.json")) == sorted(EXPECTED_PRESETS)
    for name, (enable, sparsity, cdf, chunks) in EXPECTED_PRESETS.items():
        config = load_bsa_config(PRESETS / name)
        assert config.enable_bsa is enable, name
        if chunks is None:
            assert config.params is None, name
            continue
        assert isinstance(config.params, BSAParams)
        assert (config.params.sparsity, config.params.cdf_threshold) == (sparsity, cdf), name
        assert config.params.chunk_3d_shape_q == chunks and config.params.chunk_3d_shape_k == chunks, name


def test_presets_merge_into_a_dit_config(dit_config):
    dit_config = {**dit_config, "enable_bsa": False, "bsa_params": BALANCED}
    for name in EXPECTED_PRESETS:
        preset = load_bsa_config(PRESETS / name)
        merged = merge_into_dit_config(dit_config, preset)
        assert {k: v for k, v in merged.items() if k not in ("enable_bsa", "bsa_params")} == {
            k: v for k, v in dit_config.items() if k not in ("enable_bsa", "bsa_params")
        }
        resolved = bsa_from_dit_config(merged)
        assert resolved.enable_bsa == preset.enable_bsa
        assert resolved.params == (preset.params or BSAParams.from_dict(BALANCED))  # BSA off keeps the model's params
        # the preset's keys written literally into config.json are a valid DiT config too
        literal = {**dit_config, **json.loads((PRESETS / name).read_text())}
        assert bsa_from_dit_config(literal).enable_bsa == preset.enable_bsa


def test_checkpoint_settings_are_overridden_by_the_file(dit_config, tmp_path):
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "config.json").write_text(json.dumps(dit_config))
    assert checkpoint_bsa(tmp_path) == bsa_from_dit_config(dit_config)
    fast = checkpoint_bsa(tmp_path, PRESETS / "config_720p_fast.json")
    assert fast.enable_bsa and fast.params.sparsity == 0.96875


def test_round_trip_as_json(tmp_path):
    config = load_bsa_config(PRESETS / "config_long_video.json")
    (tmp_path / "again.json").write_text(json.dumps(config.to_json_dict()))
    assert load_bsa_config(tmp_path / "again.json") == config


def _params(**changes):
    return {"enable_bsa": True, "bsa_params": {**BALANCED, **changes}}


@pytest.mark.parametrize(
    "config, named",
    [
        ({"enable_bsa": True, "bsa_params": BALANCED, "sparsity": 0.9}, "'sparsity'"),
        ({"bsa_params": BALANCED}, "'enable_bsa'"),
        ({"enable_bsa": "yes", "bsa_params": BALANCED}, "'enable_bsa'"),
        ({"enable_bsa": 1, "bsa_params": BALANCED}, "'enable_bsa'"),
        ({"enable_bsa": True, "bsa_params": None}, "'bsa_params'"),
        ({"enable_bsa": True}, "'bsa_params'"),
        ({"enable_bsa": True, "bsa_params": [0.9]}, "'bsa_params'"),
        ({"enable_bsa": True, "bsa_params": {**BALANCED, "topk": 8}}, "bsa_params.topk"),
        ({"enable_bsa": True, "bsa_params": {"sparsity": 0.9, "cdf_threshold": None}}, "bsa_params.chunk_3d_shape_q"),
        (_params(sparsity=1.0), "sparsity"),
        (_params(sparsity=-0.1), "sparsity"),
        (_params(sparsity="0.9"), "sparsity"),
        (_params(sparsity=True), "sparsity"),
        (_params(sparsity=float("nan")), "sparsity"),
        (_params(cdf_threshold=0.0), "cdf_threshold"),
        (_params(cdf_threshold=1.5), "cdf_threshold"),
        (_params(sparsity=None, cdf_threshold=None), "sparsity"),
        (_params(chunk_3d_shape_q=[4, 4]), "chunk_3d_shape_q"),
        (_params(chunk_3d_shape_q=[4, 0, 4]), "chunk_3d_shape_q"),
        (_params(chunk_3d_shape_k=[4, 4, 4.0]), "chunk_3d_shape_k"),
        (_params(chunk_3d_shape_k="444"), "chunk_3d_shape_k"),
    ],
)
def test_refusals_name_the_key(config, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_bsa_config(config, source="test.json")


def test_dit_config_refusals(dit_config):
    with pytest.raises(ConfigError, match="sparsity"):
        bsa_from_dit_config({**dit_config, "enable_bsa": True, "bsa_params": {**BALANCED, "sparsity": 2}})
    with pytest.raises(ConfigError, match="'bsa_params'"):
        bsa_from_dit_config({**dit_config, "enable_bsa": True, "bsa_params": None})


def test_file_refusals(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_bsa_config(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{\"enable_bsa\": tru")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_bsa_config(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_bsa_config(tmp_path / "list.json")


def test_log_lines(caplog):
    with caplog.at_level(logging.INFO, logger="longcat_jax.bsa_config"):
        log_bsa(load_bsa_config(PRESETS / "config_720p_balanced.json"))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == ENABLE_MESSAGE == "Enabling Block Sparse Attention (BSA) for LongCat transformer"
    assert messages[1].startswith("BSA parameters: {")
    assert json.loads(messages[1][len("BSA parameters: ") :]) == BALANCED
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="longcat_jax.bsa_config"):
        log_bsa(load_bsa_config(PRESETS / "config_480p_no_bsa.json"))
    assert not caplog.records


def test_token_grid_checks_of_the_presets():
    balanced = load_bsa_config(PRESETS / "config_720p_balanced.json")
    long_video = load_bsa_config(PRESETS / "config_long_video.json")
    check_bsa_grids(balanced, (48, 44, 80))  # refinement 720p, frames doubled
    check_bsa_grids(long_video, (24, 44, 80))
    check_bsa_grids(balanced, (1, 30, 52))  # one latent frame: BSA does not apply
    check_bsa_grids(load_bsa_config(PRESETS / "config_480p_no_bsa.json"), (24, 30, 52))
    with pytest.raises(InputError, match="does not divide"):
        check_bsa_grids(balanced, (24, 30, 52))  # 480p tokens: 30 rows do not split into 4s
    longer_keys = BSAConfig(True, BSAParams(chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(8, 4, 4)))
    with pytest.raises(InputError, match="for keys"):  # the cached 4 condition frames: no 8-frame key chunk
        check_bsa_grids(longer_keys, (24, 44, 80), num_cond_latents=4, kv_cache=True)
