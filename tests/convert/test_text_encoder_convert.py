"""Text encoder config parsing, original-checkpoint conversion and loading, and their refusals."""

import json
import shutil

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from longcat_jax.checkpoint.orbax_chunks import save_part
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError, ConfigError
from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.text_encoder.loading import load_text_encoder
from longcat_jax.models.text_encoder.params import text_encoder_tensors
from longcat_jax.models.text_encoder.umt5 import run_encoder


@pytest.fixture(scope="module")
def original(fixtures_dir):
    """The fixture encoder's config dict and tensors (original names, float32)."""
    folder = fixtures_dir / "text_encoder"
    return json.loads((folder / "config.json").read_text()), load_file(str(folder / "model.safetensors"))


def _write(folder, config, tensors, shards=1):
    """Writes an original-layout text_encoder/ folder, sharded with an index when shards > 1."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return folder
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[shard::shards]}
        save_file(part, str(folder / file))
        weight_map.update({name: file for name in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _outputs(encoder):
    ids = jnp.asarray([[5, 9, 200, 1, 0, 0]], jnp.int32)
    return np.asarray(run_encoder(encoder, ids, (ids > 0).astype(jnp.int32)), np.float32)


def test_config_reads_fixture_and_round_trips(fixtures_dir):
    config = UMT5Config.from_json(fixtures_dir / "text_encoder")
    assert config.inner_dim == config.num_heads * config.d_kv
    assert UMT5Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rotary_base": 10000}, "unknown key 'rotary_base'"),
        ({"feed_forward_proj": "relu"}, "feed_forward_proj"),
        ({"model_type": "t5"}, "model_type"),
        ({"num_heads": 0}, "num_heads"),
    ],
)
def test_config_refusals(original, change, message):
    with pytest.raises(ConfigError, match=message):
        UMT5Config.from_dict({**original[0], **change})


def test_config_missing_required_key(original):
    raw = dict(original[0])
    del raw["d_model"]
    with pytest.raises(ConfigError, match="d_model"):
        UMT5Config.from_dict(raw)


def test_sharded_bf16_checkpoint_loads_like_the_single_float32_file(original, fixtures_dir, tmp_path):
    config, tensors = original
    # the fixture weights are bfloat16 values stored as float32, so bfloat16 on disk loses nothing
    bf16 = {name: array.astype(ml_dtypes.bfloat16) for name, array in tensors.items()}
    folder = _write(tmp_path / "text_encoder", config, bf16, shards=3)
    from_shards = load_text_encoder(folder, dtype=jnp.float32)
    from_single = load_text_encoder(fixtures_dir / "text_encoder", dtype=jnp.float32)
    np.testing.assert_array_equal(_outputs(from_shards), _outputs(from_single))


def test_converted_folder_loads_like_the_original(original, fixtures_dir, tmp_path):
    folder = fixtures_dir / "text_encoder"
    config = UMT5Config.from_json(folder)
    converted = save_part(
        text_encoder_tensors(SafetensorsCheckpoint(folder), config), tmp_path / "text_encoder", config.to_dict()
    )
    np.testing.assert_array_equal(
        _outputs(load_text_encoder(converted, dtype=jnp.float32)),
        _outputs(load_text_encoder(folder, dtype=jnp.float32)),
    )


def test_converter_transposes_linears_and_keeps_dtype(original, fixtures_dir):
    raw_config, tensors = original
    checkpoint = SafetensorsCheckpoint(fixtures_dir / "text_encoder")
    converted = dict(text_encoder_tensors(checkpoint, UMT5Config.from_dict(raw_config)))
    q = tensors["encoder.block.1.layer.0.SelfAttention.q.weight"]
    np.testing.assert_array_equal(converted[("layers", 1, "attention", "query", "kernel")], q.T)
    wi_0 = tensors["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"]
    np.testing.assert_array_equal(converted[("layers", 0, "ffn", "gate", "kernel")], wi_0.T)
    assert converted[("token_embedding", "embedding")].dtype == np.float32
    assert len(converted) == len(tensors)


def test_tied_embedding_copy(original, tmp_path):
    config, tensors = original
    shared = tensors["shared.weight"]
    with_copy = _write(tmp_path / "copy", config, {**tensors, "encoder.embed_tokens.weight": shared.copy()})
    only_copy = {k: v for k, v in tensors.items() if k != "shared.weight"}
    only_copy = _write(tmp_path / "only", config, {**only_copy, "encoder.embed_tokens.weight": shared})
    np.testing.assert_array_equal(
        _outputs(load_text_encoder(with_copy, dtype=jnp.float32)),
        _outputs(load_text_encoder(only_copy, dtype=jnp.float32)),
    )
    different = _write(tmp_path / "diff", config, {**tensors, "encoder.embed_tokens.weight": shared[::-1].copy()})
    with pytest.raises(CheckpointError, match="encoder.embed_tokens.weight differs"):
        load_text_encoder(different, dtype=jnp.float32)


def test_refuses_unmapped_key(original, tmp_path):
    config, tensors = original
    folder = _write(tmp_path / "te", config, {**tensors, "lm_head.weight": tensors["shared.weight"]})
    with pytest.raises(CheckpointError, match="'lm_head.weight'"):
        load_text_encoder(folder, dtype=jnp.float32)


def test_refuses_block_beyond_config(original, tmp_path):
    config, tensors = original
    extra = {"encoder.block.7.layer.0.layer_norm.weight": tensors["encoder.final_layer_norm.weight"]}
    folder = _write(tmp_path / "te", config, {**tensors, **extra})
    with pytest.raises(CheckpointError, match="encoder.block.7.layer.0.layer_norm.weight"):
        load_text_encoder(folder, dtype=jnp.float32)


def test_refuses_missing_key(original, tmp_path):
    config, tensors = original
    kept = {name: array for name, array in tensors.items() if "block.1.layer.1.DenseReluDense.wo" not in name}
    folder = _write(tmp_path / "te", config, kept)
    with pytest.raises(CheckpointError, match=r"missing.*layers\.1\.ffn\.down\.kernel"):
        load_text_encoder(folder, dtype=jnp.float32)


def test_refuses_wrong_shape(original, tmp_path):
    config, tensors = original
    name = "encoder.block.0.layer.0.SelfAttention.k.weight"
    folder = _write(tmp_path / "te", config, {**tensors, name: tensors[name][:, :-1].copy()})
    with pytest.raises(CheckpointError, match=name):
        load_text_encoder(folder, dtype=jnp.float32)


def test_refuses_missing_folder_and_config(fixtures_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_text_encoder(tmp_path / "nowhere")
    folder = tmp_path / "te"
    folder.mkdir()
    shutil.copy(fixtures_dir / "text_encoder" / "model.safetensors", folder)
    with pytest.raises(CheckpointError, match="config.json"):
        load_text_encoder(folder)


def test_refusals_come_before_the_first_tensor(original, tmp_path):
    """`python -m convert` primes the generator once: every check must happen before it yields."""
    config, tensors = original
    kept = {name: array for name, array in tensors.items() if name != "encoder.final_layer_norm.weight"}
    folder = _write(tmp_path / "te", config, kept)
    with pytest.raises(CheckpointError, match="final_norm.scale"):
        next(text_encoder_tensors(SafetensorsCheckpoint(folder), UMT5Config.from_dict(config)))
