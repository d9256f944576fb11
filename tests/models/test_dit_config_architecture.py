"""A DiT config.json without its architecture keys is refused, saying what happened and the fix; above all "method 1"
of FastVideo's BSA guide (a preset copied over the model's config.json, which with our two-key presets destroys it).
FastVideo's transformer/config.json (`num_attention_heads`, its `_class_name`) reads as the original's."""

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import pytest

from longcat_jax.errors import ConfigError
from longcat_jax.models.dit import load_dit
from longcat_jax.models.dit.config import ARCHITECTURE_KEYS, DiTConfig, original_form
from longcat_jax.pipelines.pipeline import LongCatPipeline
from tests.helpers.fastvideo_checkpoint import fastvideo_dit_config

PRESETS = Path(__file__).resolve().parents[2] / "longcat_jax" / "configs" / "bsa"


@pytest.fixture()
def fixture_config(fixtures_dir) -> dict:
    return json.loads((fixtures_dir / "dit" / "config.json").read_text())


def _method_1(folder: Path, preset: Path) -> Path:
    """`cp PRESET FOLDER/config.json`, as the guide's method 1 does."""
    folder.mkdir(parents=True)
    shutil.copy(preset, folder / "config.json")
    return folder / "config.json"


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS.glob("*.json")))
def test_a_preset_copied_over_config_json_is_refused_with_the_fix(tmp_path, preset):
    path = _method_1(tmp_path / "dit", PRESETS / preset)
    with pytest.raises(ConfigError) as error:
        DiTConfig.from_json(path)
    message = str(error.value)
    assert str(path) in message
    assert "looks like a BSA preset copied over the model's config.json" in message
    assert "hf download meituan-longcat/LongCat-Video dit/config.json" in message
    assert "--bsa-config PRESET" in message and "method 2" in message


def test_in_fastvideos_layout_the_fix_names_its_folder_and_hub_repository(tmp_path):
    path = _method_1(tmp_path / "transformer", PRESETS / "config_720p_balanced.json")
    with pytest.raises(ConfigError, match="hf download FastVideo/LongCat-Video-T2V-Diffusers transformer/config.json"):
        DiTConfig.from_json(path)


def test_a_config_without_any_architecture_key_is_refused(fixture_config):
    implementation_only = {k: v for k, v in fixture_config.items() if k.startswith(("_", "enable_flash", "enable_x"))}
    with pytest.raises(ConfigError, match="holds none of the model's architecture keys.*restore dit/config.json"):
        DiTConfig.from_dict(implementation_only, source="my config")
    with pytest.raises(ConfigError, match="holds none of the model's architecture keys"):
        DiTConfig.from_dict({})


def test_one_architecture_key_is_enough_the_rest_take_the_released_values():
    for key in ARCHITECTURE_KEYS:
        assert DiTConfig.from_dict({key: getattr(DiTConfig(), key)}) == DiTConfig()
    assert DiTConfig.from_dict({"depth": 2, "enable_bsa": False}) == DiTConfig(depth=2)


def test_loading_refuses_before_reading_weights(tmp_path, fixtures_dir):
    """`load_dit` and `LongCatPipeline.from_pretrained` stop at the config, before any tensor is read."""
    root = tmp_path / "checkpoint"
    for part in ("vae", "text_encoder", "tokenizer"):
        (root / part).mkdir(parents=True)
    (root / "tokenizer" / "spiece.model").write_bytes(b"never read")
    shutil.copytree(fixtures_dir / "dit", root / "dit")
    shutil.copy(PRESETS / "config_720p_fast.json", root / "dit" / "config.json")
    with pytest.raises(ConfigError, match="BSA preset copied over"):
        load_dit(root / "dit", dtype=jnp.float32)
    with pytest.raises(ConfigError, match="BSA preset copied over"):
        LongCatPipeline.from_pretrained(root, dtype=jnp.float32)


def test_fastvideos_config_reads_as_the_original(fixture_config):
    fastvideo = fastvideo_dit_config(fixture_config)
    assert "num_heads" not in fastvideo and fastvideo["_class_name"] == "LongCatTransformer3DModel"
    assert DiTConfig.from_dict(fastvideo) == DiTConfig.from_dict(fixture_config)
    assert original_form(fastvideo) == fixture_config
    assert original_form(fixture_config) == fixture_config


def test_fastvideos_and_the_originals_head_count_must_agree(fixture_config):
    both = {**fixture_config, "num_attention_heads": fixture_config["num_heads"]}
    assert DiTConfig.from_dict(both) == DiTConfig.from_dict(fixture_config)
    with pytest.raises(ConfigError, match="num_attention_heads=.*disagree"):
        DiTConfig.from_dict({**both, "num_attention_heads": 2 * fixture_config["num_heads"]})
