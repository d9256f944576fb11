"""`python -m convert` refuses at plan time, before anything is written, what would otherwise fail mid-write or
pass silently: LoRA factors of the wrong rank, one block named two ways, --quantize without a DiT, and a source or
destination that is not what a conversion takes; and a float8 e5m2 tensor, which safetensors may hold, converts."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from convert.api import convert_checkpoint
from longcat_jax.checkpoint.orbax_chunks import read_index
from longcat_jax.errors import CheckpointError, ConfigError
from longcat_jax.models.dit import load_dit
from tests.helpers import dit_checkpoints
from tests.helpers.dit_checkpoints import dit_config, write_original_dit, write_safetensors, write_sharded
from tests.helpers.fastvideo_checkpoint import fastvideo_lora, read_all

SMALL = dit_config(hidden_size=64, depth=2, num_heads=2)
PROJ = "lora___lorahyphen___blocks___lorahyphen___1___lorahyphen___attn___lorahyphen___proj"


def _lora_source(tmp_path, fixtures_dir, change) -> tuple:
    """A source holding only the fixture LoRA, as `change` leaves its tensors."""
    tensors = read_all(fixtures_dir / "lora_rank8.safetensors")
    change(tensors)
    (tmp_path / "src" / "lora").mkdir(parents=True)
    write_safetensors(tmp_path / "src" / "lora" / "mine.safetensors", tensors)
    return tmp_path / "src", tmp_path / "dst"


def _refused(src, dst, error, match) -> None:
    with pytest.raises(error, match=match):
        convert_checkpoint(src, dst, allow_incomplete=True, progress=False)
    assert not dst.exists(), "a refusal at plan time writes nothing"


@pytest.mark.parametrize("slot, make", [
    ("alpha_scale", lambda alpha: np.ones(2, np.float32)),
    ("lora_down.weight", lambda down: down.reshape(-1)),
    ("lora_down.weight", lambda down: down[..., None]),
    ("lora_up.weight", lambda up: up[..., None]),
])
def test_lora_factors_of_the_wrong_rank_are_refused_naming_the_tensor(tmp_path, fixtures_dir, slot, make):
    def change(tensors):
        tensors[f"{PROJ}.{slot}"] = make(tensors[f"{PROJ}.{slot}"])
    src, dst = _lora_source(tmp_path, fixtures_dir, change)
    _refused(src, dst, CheckpointError, rf"LoRA of '{PROJ}' has .*{slot} \[.*do not form a LoRA")


def test_fastvideo_lora_factors_of_the_wrong_rank_are_refused(tmp_path, fixtures_dir):
    def change(tensors):
        converted = fastvideo_lora(tensors)
        converted["blocks.1.self_attn.to_out.lora_alpha"] = np.ones(2, np.float32)
        tensors.clear()
        tensors.update(converted)
    src, dst = _lora_source(tmp_path, fixtures_dir, change)
    _refused(src, dst, CheckpointError, r"LoRA of 'blocks.1.self_attn.to_out' has .*lora_alpha \[2\].*do not form")


def test_a_lora_naming_one_block_two_ways_is_refused_naming_both(tmp_path, fixtures_dir):
    twice = PROJ.replace("___1___", "___01___")

    def change(tensors):
        for name in [n for n in tensors if n.startswith(PROJ)]:
            tensors[name.replace(PROJ, twice)] = tensors[name]
    src, dst = _lora_source(tmp_path, fixtures_dir, change)
    _refused(src, dst, CheckpointError, rf"'{twice}' and '{PROJ}' both update blocks.1.attn.proj")


def test_a_fastvideo_lora_naming_one_block_two_ways_is_refused(tmp_path, fixtures_dir):
    def change(tensors):
        converted = fastvideo_lora(tensors)
        for name in [n for n in converted if n.startswith("blocks.1.self_attn.to_out.")]:
            converted[name.replace("blocks.1.", "blocks.01.")] = converted[name]
        tensors.clear()
        tensors.update(converted)
    src, dst = _lora_source(tmp_path, fixtures_dir, change)
    _refused(src, dst, CheckpointError, r"of 'blocks.0?1.attn.proj' and of 'blocks.0?1.attn.proj'.*both update "
             "blocks.1.attn.proj")


def test_a_dit_naming_one_block_two_ways_is_refused_naming_both(tmp_path):
    tensors = write_original_dit(tmp_path / "src" / "dit", SMALL)
    for file in (tmp_path / "src" / "dit").glob("*.safetensors*"):
        file.unlink()
    tensors["blocks.01.ffn.w2.weight"] = tensors["blocks.1.ffn.w2.weight"]
    write_sharded(tmp_path / "src" / "dit", tensors, 2)
    _refused(tmp_path / "src", tmp_path / "dst", CheckpointError,
             r"'blocks.01.ffn.w2.weight' and 'blocks.1.ffn.w2.weight' are both blocks.1.ffn.w2.kernel")


def test_a_float8_e5m2_tensor_converts_and_loads_as_it_loads_directly(tmp_path, monkeypatch):
    monkeypatch.setitem(dit_checkpoints._DTYPE_NAMES, np.dtype(ml_dtypes.float8_e5m2), "F8_E5M2")
    tensors = write_original_dit(tmp_path / "src" / "dit", SMALL)
    for file in (tmp_path / "src" / "dit").glob("*.safetensors*"):
        file.unlink()
    name = "blocks.1.ffn.w2.weight"
    tensors[name] = np.asarray(tensors[name], np.float32).astype(ml_dtypes.float8_e5m2)
    write_sharded(tmp_path / "src" / "dit", tensors, 2)
    convert_checkpoint(tmp_path / "src", tmp_path / "dst", allow_incomplete=True, progress=False)
    assert "float8_e5m2" in {entry["dtype"] for entry in read_index(tmp_path / "dst" / "dit")}
    direct = nnx.to_flat_state(nnx.state(load_dit(tmp_path / "src" / "dit", dtype=jnp.float32), nnx.Param))
    converted = nnx.to_flat_state(nnx.state(load_dit(tmp_path / "dst" / "dit", dtype=jnp.float32), nnx.Param))
    for (path, a), (_, b) in zip(direct, converted, strict=True):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))


@pytest.mark.parametrize("calibration", [None, "/nonexistent.npz"])
def test_quantize_without_a_dit_is_refused_by_name(tmp_path, fixtures_dir, calibration):
    src, dst = _lora_source(tmp_path, fixtures_dir, lambda tensors: None)
    with pytest.raises(ConfigError, match="--quantize int8 .*has no dit/.*drop them"):
        convert_checkpoint(src, dst, allow_incomplete=True, progress=False, quantize="int8", calibration=calibration)
    assert not dst.exists()


def test_the_source_as_destination_is_refused_as_the_same_folder(tmp_path):
    write_original_dit(tmp_path / "src" / "dit", SMALL)
    with pytest.raises(CheckpointError, match="is the source folder.*pass a new folder"):
        convert_checkpoint(tmp_path / "src", tmp_path / "src" / ".." / "src", allow_incomplete=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["dit"]


def test_an_original_download_as_destination_is_not_taken_for_a_conversion(tmp_path):
    write_original_dit(tmp_path / "src" / "dit", SMALL)
    write_original_dit(tmp_path / "other" / "dit", SMALL)
    with pytest.raises(CheckpointError, match=r"holds dit.*dit/ not converted: it looks like an original download"):
        convert_checkpoint(tmp_path / "src", tmp_path / "other", allow_incomplete=True, progress=False)


def test_a_converted_folder_as_source_is_refused_pointing_to_model_path(tmp_path):
    write_original_dit(tmp_path / "src" / "dit", SMALL)
    convert_checkpoint(tmp_path / "src", tmp_path / "converted", allow_incomplete=True, progress=False)
    with pytest.raises(CheckpointError, match="already a converted checkpoint.*--model-path"):
        convert_checkpoint(tmp_path / "converted", tmp_path / "again", allow_incomplete=True, progress=False)
    assert not (tmp_path / "again").exists()
