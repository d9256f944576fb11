"""The safetensors reader follows the format's rules: shard names stay inside the checkpoint's folder, and
headers are JSON objects of well-formed, contiguous entries. Every breach is a CheckpointError naming the
file and the tensor, never a KeyError, TypeError or AttributeError from inside the parser."""

import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from convert.api import convert_checkpoint
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint, check_checkpoint_shards
from longcat_jax.errors import CheckpointError
from longcat_jax.models.dit import load_dit
from tests.helpers.dit_checkpoints import dit_config, write_original_dit, write_raw_safetensors, write_safetensors
from tests.helpers.fixture_checkpoint import link_fixture_checkpoint

SMALL = dit_config(hidden_size=64, depth=2, num_heads=2)


def _index(folder, weight_map):
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _dit_folder(tmp_path):
    """An original dit/ folder of two shards; returns (checkpoint root, dit folder, {tensor: shard name})."""
    folder = tmp_path / "ckpt" / "dit"
    write_original_dit(folder, SMALL)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    return tmp_path / "ckpt", folder, json.loads(index.read_text())["weight_map"]


def _moved_out(folder, weight_map, outside):
    """Moves the first shard of `weight_map` to `outside`; returns that shard's name."""
    shard = sorted(set(weight_map.values()))[0]
    outside.parent.mkdir(parents=True, exist_ok=True)
    (folder / shard).rename(outside)
    return shard


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_shard_names_outside_the_folder_are_refused(tmp_path, how):
    root, folder, weight_map = _dit_folder(tmp_path)
    outside = tmp_path / "elsewhere" / "x.safetensors"
    shard = _moved_out(folder, weight_map, outside)
    entry = "../../elsewhere/x.safetensors" if how == "dotdot" else str(outside)
    _index(folder, {name: (entry if file == shard else file) for name, file in weight_map.items()})
    with pytest.raises(CheckpointError, match=f"{entry}.*outside"):
        SafetensorsCheckpoint(folder)
    with pytest.raises(CheckpointError, match="outside"):
        load_dit(folder, dtype=jnp.float32)
    with pytest.raises(CheckpointError, match="outside"):
        convert_checkpoint(root, tmp_path / "dst", allow_incomplete=True)
    assert not (tmp_path / "dst").exists()


def test_symlinked_shards_as_the_hub_cache_makes_them_are_accepted(tmp_path):
    """The hub cache keeps blobs in `blobs/` and links them from `snapshots/<rev>/dit/<shard name>`."""
    _, folder, weight_map = _dit_folder(tmp_path)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for i, shard in enumerate(sorted(set(weight_map.values()))):
        (folder / shard).rename(blobs / f"blob{i}")
        (folder / shard).symlink_to(os.path.relpath(blobs / f"blob{i}", folder))
    model = load_dit(folder, dtype=jnp.float32)
    assert model.config.depth == SMALL["depth"]


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ([{"weight_map": {}}], "must hold a JSON object, not a list"),
        ({"weight_map": ["a.safetensors"]}, "weight_map must be an object"),
        ({"metadata": {}}, "has no weight_map"),
        ({"weight_map": {"blocks.0.attn.qkv.weight": 7}}, "blocks.0.attn.qkv.weight.*must be a file name"),
    ],
    ids=["index-list", "weight-map-list", "no-weight-map", "shard-not-a-string"],
)
def test_malformed_index_is_refused(tmp_path, index, message):
    _, folder, _ = _dit_folder(tmp_path)
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=message):
        SafetensorsCheckpoint(folder)


_F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ([_F32x2], bytes(8), "header must be a JSON object, not a list"),
        ({"w": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8), "tensor w.*lacks 'dtype'"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, bytes(8), "tensor w.*data_offsets"),
        ({"w": None}, bytes(8), "tensor w.*must be an object"),
        ({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, bytes(8), "tensor w.*shape.*non-negative integers"),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "tensor w.*shape.*non-negative integers"),
        ({"w": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, bytes(8), "tensor w.*shape.*non-negative integers"),
        ({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, bytes(8), "tensor w.*shape.*non-negative integers"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8), "tensor w.*data_offsets"),
        ({"w": {"dtype": 32, "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "tensor w.*dtype"),
        ({"w": _F32x2, "v": _F32x2}, bytes(8), "tensors v and w overlap"),
        ({"w": _F32x2, "v": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, bytes(20),
         "gap of 4 bytes between tensors w and v"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "tensor w.*starts at byte 4"),
        ({"w": _F32x2}, bytes(12), "4 bytes after the last tensor"),
        ({"__metadata__": ["x"], "w": _F32x2}, bytes(8), "__metadata__"),
    ],
    ids=["header-list", "no-dtype", "string-offsets", "null-entry", "float-shape", "negative-shape", "bool-shape",
         "shape-not-list", "one-offset", "dtype-not-string", "overlap", "gap", "not-from-zero", "trailing-bytes",
         "metadata-list"],
)
def test_malformed_header_is_refused_naming_file_and_tensor(tmp_path, header, data, message):
    path = tmp_path / "forged.safetensors"
    write_raw_safetensors(path, header, data)
    with pytest.raises(CheckpointError, match=message) as refused:
        SafetensorsCheckpoint(path)
    assert str(path) in str(refused.value)


def test_duplicate_tensor_names_in_a_header_are_refused(tmp_path):
    path = tmp_path / "twice.safetensors"
    raw = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
          b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(CheckpointError, match="'w' appears twice in the header"):
        SafetensorsCheckpoint(path)


def test_oversized_header_length_is_refused_before_reading_it(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + bytes(16))
    with pytest.raises(CheckpointError, match="header"):
        SafetensorsCheckpoint(path)


def test_a_well_formed_file_still_reads(tmp_path):
    tensors = {"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.float32), "empty": np.zeros((0,), np.float32)}
    write_safetensors(tmp_path / "ok.safetensors", tensors)
    ckpt = SafetensorsCheckpoint(tmp_path / "ok.safetensors")
    for name, array in tensors.items():
        np.testing.assert_array_equal(ckpt.read(name), array)


def test_a_checkpoint_missing_a_shard_is_refused_before_any_model_loads(tmp_path, fixtures_dir):
    """A partial download (one DiT shard absent): `plan_run` and `from_pretrained` refuse it up front, where the run
    would have loaded the text encoder and VAE and encoded its prompts first."""
    root = link_fixture_checkpoint(tmp_path, fixtures_dir)
    check_checkpoint_shards(root)  # whole
    (root / "dit").unlink()
    (root / "dit").mkdir()
    for source in (fixtures_dir / "dit").iterdir():
        if not source.name.endswith("00002-of-00002.safetensors"):
            (root / "dit" / source.name).symlink_to(source)
    with pytest.raises(CheckpointError, match=r"dit is missing shard\(s\) \['diffusion_pytorch_model-00002-of-00002"):
        check_checkpoint_shards(root)
