"""Our chunked Orbax format: quantized dtypes round-trip, every file is checksummed at writing and verified
at loading (a flipped byte is refused with the file named), a damaged index is refused, and Orbax's INFO
lines stay out of the log at the default level."""

import json
import logging

import ml_dtypes
import numpy as np
import pytest

from longcat_jax.checkpoint.orbax_chunks import INDEX_NAME, iter_part, read_index, save_part
from longcat_jax.errors import CheckpointError


def _tensors():
    rng = np.random.default_rng(0)
    return [
        (("embed", "kernel"), rng.standard_normal((64, 32), dtype=np.float32).astype(ml_dtypes.bfloat16)),
        (("blocks", 0, "w"), rng.standard_normal((256, 128), dtype=np.float32)),
        (("blocks", 0, "b"), np.arange(5, dtype=np.int64)),
        (("blocks", 1, "w"), rng.standard_normal((128, 128), dtype=np.float32)),
    ]


@pytest.fixture
def part(tmp_path):
    return save_part(iter(_tensors()), tmp_path / "part", {"a": 1}, progress=False)


def _files(chunk_dir):
    return sorted(p for p in chunk_dir.rglob("*") if p.is_file())


def test_float8_and_int8_round_trip(tmp_path):
    """float8 e5m2 too: safetensors may hold it, so a DiT with one converts."""
    rng = np.random.default_rng(1)
    tensors = [
        (("blocks", 0, "qkv", "kernel"), rng.standard_normal((16, 8), dtype=np.float32).astype(ml_dtypes.float8_e4m3fn)),
        (("blocks", 0, "qkv", "scale"), rng.standard_normal((8,), dtype=np.float32)),
        (("blocks", 0, "proj", "kernel"), rng.integers(-128, 128, (8, 8), dtype=np.int8)),
        (("blocks", 0, "proj", "scale"), np.float32(0.25) * np.ones((8,), np.float32)),
        (("blocks", 0, "w2", "kernel"), rng.standard_normal((8, 8), dtype=np.float32).astype(ml_dtypes.float8_e5m2)),
    ]
    save_part(iter(tensors), tmp_path / "q", {}, progress=False)
    assert [e["dtype"] for e in read_index(tmp_path / "q")] == ["float8_e4m3fn", "float32", "int8", "float32",
                                                               "float8_e5m2"]
    back = list(iter_part(tmp_path / "q"))
    for (path, got), (want_path, want) in zip(back, tensors, strict=True):
        assert path == want_path and got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_every_file_carries_a_checksum(part):
    index = json.loads((part / INDEX_NAME).read_text())
    chunk_files = {name: sorted(files) for name, files in index["chunks"].items()}
    for name, files in chunk_files.items():
        on_disk = [p.relative_to(part / "chunks" / name).as_posix() for p in _files(part / "chunks" / name)]
        assert files == on_disk
        assert all({"size", "crc32"} <= set(index["chunks"][name][f]) for f in files)


@pytest.mark.parametrize("which", ["largest data file", "manifest"])
def test_a_flipped_byte_is_refused_with_the_file_named(part, which):
    chunk = part / "chunks" / "00001"
    files = _files(chunk)
    target = max(files, key=lambda p: p.stat().st_size) if which == "largest data file" else chunk / "manifest.ocdbt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    relative = target.relative_to(part).as_posix()
    with pytest.raises(CheckpointError, match=f"{relative}.*checksum.*convert again"):
        list(iter_part(part))


def test_a_missing_or_an_added_file_is_refused(part):
    chunk = part / "chunks" / "00000"
    (chunk / "d" / "extra").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="chunks/00000/d/extra.*not part of"):
        list(iter_part(part))
    (chunk / "d" / "extra").unlink()
    (chunk / "manifest.ocdbt").unlink()
    with pytest.raises(CheckpointError, match="chunks/00000/manifest.ocdbt is missing"):
        list(iter_part(part))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda index: [index], "must hold a JSON object"),
        (lambda index: {**index, "format": "longcat-jax/orbax-chunks/1"}, "orbax-chunks/1.*convert again"),
        (lambda index: {**index, "tensors": {}}, "tensors must be a list"),
        (lambda index: {**index, "tensors": [{**index["tensors"][0], "chunk": "0"}]}, "entry 0.*chunk"),
        (lambda index: {**index, "tensors": [{**index["tensors"][0], "dtype": "int4"}]}, "entry 0.*dtype"),
        (lambda index: {**index, "tensors": [{**index["tensors"][0], "shape": [-1]}]}, "entry 0.*shape"),
        (lambda index: {k: v for k, v in index.items() if k != "chunks"}, "no checksums"),
        (lambda index: {**index, "chunks": {"00000": {"../../x": {"size": 1, "crc32": 0}}}}, r"\.\./\.\./x.*outside"),
    ],
    ids=["list", "old-format", "tensors-object", "chunk-string", "unknown-dtype", "negative-shape", "no-checksums",
         "file-outside"],
)
def test_a_damaged_index_is_refused(part, change, message):
    index = json.loads((part / INDEX_NAME).read_text())
    (part / INDEX_NAME).write_text(json.dumps(change(index)))
    with pytest.raises(CheckpointError, match=message):
        list(iter_part(part))


def test_orbax_info_lines_are_silent_at_the_default_level(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    save_part(iter(_tensors()), tmp_path / "part", {}, progress=False)
    list(iter_part(tmp_path / "part"))
    assert not [r for r in caplog.records if r.name == "absl" and r.levelno < logging.WARNING]
    assert logging.getLogger("absl").level == logging.NOTSET  # restored, not changed for good


def test_orbax_info_lines_show_at_debug(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    save_part(iter(_tensors()), tmp_path / "part", {}, progress=False)
    list(iter_part(tmp_path / "part"))
    assert [r for r in caplog.records if r.name == "absl"]
