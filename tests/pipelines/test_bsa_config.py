"""The JSON form of BSA settings: the six presets, the same keys inside a DiT config.json, keys left out (filled
with the released values, each logged), every refusal, all bad values named at once."""

import json
import logging
from pathlib import Path

import pytest

from kernels import BSAParams
from longcat_jax.bsa_config import RELEASED_PARAMS, params_to_json, parse_bsa_config, read_bsa_config
from longcat_jax.errors import ConfigError
from longcat_jax.models.dit.config import DiTConfig

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "bsa"
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
        params = read_bsa_config(PRESETS / name)
        if not enable:
            assert params is None, name
            continue
        assert isinstance(params, BSAParams)
        assert (params.sparsity, params.cdf_threshold) == (sparsity, cdf), name
        assert params.chunk_3d_shape_q == chunks and params.chunk_3d_shape_k == chunks, name


def test_preset_keys_written_into_a_dit_config_read_the_same(dit_config):
    """Method 2 of the BSA guide: the preset's two keys merged into dit/config.json set the model's default."""
    for name, (enable, *_) in EXPECTED_PRESETS.items():
        literal = DiTConfig.from_dict({**dit_config, **json.loads((PRESETS / name).read_text())})
        assert literal.enable_bsa is enable, name
        if enable:
            assert literal.bsa_params == read_bsa_config(PRESETS / name), name
        others = {k: v for k, v in literal.to_dict().items() if k not in ("enable_bsa", "bsa_params")}
        assert others == {k: v for k, v in DiTConfig.from_dict(dit_config).to_dict().items() if k in others}


def test_round_trip_as_json(tmp_path):
    params = read_bsa_config(PRESETS / "config_long_video.json")
    (tmp_path / "again.json").write_text(json.dumps({"enable_bsa": True, "bsa_params": params_to_json(params)}))
    assert read_bsa_config(tmp_path / "again.json") == params


def test_the_guides_quick_start_config_fills_cdf_threshold_with_null(tmp_path, caplog):
    """Issue 23, workflow 1: the guide's config has no cdf_threshold."""
    path = tmp_path / "quick_start.json"
    path.write_text('{"enable_bsa": true, "bsa_params": {"sparsity": 0.9375, "chunk_3d_shape_q": [4,4,4], '
                    '"chunk_3d_shape_k": [4,4,4]}}')
    with caplog.at_level(logging.INFO, logger="longcat_jax.bsa_config"):
        assert read_bsa_config(path) == BSAParams.from_dict(BALANCED)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: bsa_params.cdf_threshold not given; BSA uses null (the released checkpoint's value)"
    ]


def test_missing_keys_take_the_released_values_each_logged(caplog):
    with caplog.at_level(logging.INFO, logger="longcat_jax.bsa_config"):
        params = parse_bsa_config({"enable_bsa": True, "bsa_params": {"cdf_threshold": 0.9}}, source="mine.json")
    assert params == BSAParams(sparsity=0.9375, cdf_threshold=0.9, chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4))
    assert params.sparsity == RELEASED_PARAMS.sparsity
    assert [r.getMessage() for r in caplog.records] == [
        "mine.json: bsa_params.sparsity not given; BSA uses 0.9375 (the released checkpoint's value)",
        "mine.json: bsa_params.chunk_3d_shape_q not given; BSA uses [4, 4, 4] (the released checkpoint's value)",
        "mine.json: bsa_params.chunk_3d_shape_k not given; BSA uses [4, 4, 4] (the released checkpoint's value)",
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="longcat_jax.bsa_config"):
        assert parse_bsa_config({"enable_bsa": True, "bsa_params": {}}, source="empty.json") == RELEASED_PARAMS
    assert len(caplog.records) == 4
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="longcat_jax.bsa_config"):
        parse_bsa_config({"enable_bsa": True, "bsa_params": BALANCED}, source="whole.json")
    assert not caplog.records


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
        ({"enable_bsa": False, "bsa_params": {**BALANCED, "sparsity": 2}}, "sparsity"),  # checked when off too
    ],
)
def test_refusals_name_the_key(config, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_bsa_config(config, source="test.json")


def test_every_bad_value_is_named_in_one_message():
    config = {"enable_bsa": "yes", "topk": 3, "bsa_params": {"sparsity": 2, "cdf_threshold": 0, "chunk_3d_shape_q": [4, 4],
                                                             "chunk_3d_shape_k": [4, 4, 4], "block": 64}}
    with pytest.raises(ConfigError) as refusal:
        parse_bsa_config(config, source="bad.json")
    message = str(refusal.value)
    assert message.startswith("bad.json: ")
    for named in ("unknown key 'topk'", "'enable_bsa' must be true or false, got 'yes'", "'bsa_params.block'",
                  "sparsity must be in [0, 1), got 2", "cdf_threshold must be in (0, 1], got 0",
                  "chunk_3d_shape_q must be three positive ints"):
        assert named in message, named
    assert "chunk_3d_shape_k must" not in message  # the good value is not blamed


def test_dit_config_refusals(dit_config):
    with pytest.raises(ConfigError, match="sparsity"):
        DiTConfig.from_dict({**dit_config, "enable_bsa": True, "bsa_params": {**BALANCED, "sparsity": 2}})
    with pytest.raises(ConfigError, match="'bsa_params'"):
        DiTConfig.from_dict({**dit_config, "enable_bsa": True, "bsa_params": None})


def test_file_refusals(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_bsa_config(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{\"enable_bsa\": tru")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_bsa_config(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        read_bsa_config(tmp_path / "list.json")
