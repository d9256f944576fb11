"""Lazy, validated reading of (sharded) safetensors checkpoints, one tensor at a time.

The original LongCat checkpoint stores each part (`dit/`, `vae/`, `text_encoder/`, `lora/`) as one
safetensors file or as shards with a `*.safetensors.index.json`. Every shard is checked up front, by the
format's rules as the official library applies them, so a damaged, truncated or hostile file fails before
any work and always as a CheckpointError naming the file and the tensor:
- the index is a JSON object whose `weight_map` names shards inside the checkpoint's own folder (a shard
  may be a symlink, as in the Hugging Face cache: the rule is about the names, not where links point);
- the header is a JSON object of {tensor: {dtype, shape, data_offsets}} with known dtypes, shapes of
  non-negative integers, and byte ranges that fit the dtype and shape, start at 0, neither overlap nor
  leave gaps, and end exactly at the end of the file.
Each `read` opens the file and reads one tensor into its own array, so nothing stays mapped: reading a
27 GB model keeps one tensor resident, not the pages of every shard touched so far.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from longcat_jax.checkpoint.layout import TEXT_ENCODER, VAE, dit_folder, names_a_file_inside
from longcat_jax.errors import CheckpointError

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
MAX_HEADER_BYTES = 100_000_000  # the official library's limit
_INDEX_SUFFIX = ".safetensors.index.json"
_REDOWNLOAD = "the file is damaged or not a safetensors file; download it again"


class TensorInfo(NamedTuple):
    """One header entry, validated: the safetensors dtype name, numpy dtype, shape and byte range in the data."""

    dtype_name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _is_count(value: Any) -> bool:
    """A JSON non-negative integer (JSON true/false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads` hook: a name given twice would silently drop one of its entries."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _tensor_info(path: Path, name: str, entry: Any) -> TensorInfo:
    """Validates one header entry (everything but its place among the others)."""
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: tensor {name}: its header entry must be an object with dtype, shape and "
                              f"data_offsets, not {_json_kind(entry)}; {_REDOWNLOAD}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise CheckpointError(f"{path}: tensor {name} lacks {key!r} in the header; {_REDOWNLOAD}")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dtype_name!r}; supported: {sorted(_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(f"{path}: tensor {name} has shape {json.dumps(shape)}; a shape must be a list of "
                              f"non-negative integers. {_REDOWNLOAD}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
            or offsets[0] > offsets[1]:
        raise CheckpointError(f"{path}: tensor {name} has data_offsets {json.dumps(offsets)}; they must be two "
                              f"integers 0 <= begin <= end. {_REDOWNLOAD}")
    dtype = _DTYPES[dtype_name]
    begin, end = offsets
    if end - begin != dtype.itemsize * math.prod(shape):
        raise CheckpointError(
            f"{path}: tensor {name} of shape {tuple(shape)} and dtype {dtype_name} cannot span bytes "
            f"{begin}..{end}; the header is damaged, download the file again"
        )
    return TensorInfo(dtype_name, dtype, tuple(shape), begin, end)


def _check_layout(path: Path, entries: dict[str, TensorInfo], data_bytes: int) -> None:
    """The tensors' byte ranges must tile the data exactly: from 0, no overlap, no gap, nothing after."""
    position, previous = 0, None
    for name, info in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end, item[0])):
        if info.begin < position:
            raise CheckpointError(f"{path}: tensors {previous} and {name} overlap (bytes {info.begin}..{position}); "
                                  f"{_REDOWNLOAD}")
        if info.begin > position:
            where = f"between tensors {previous} and {name}" if previous else f"before tensor {name}"
            raise CheckpointError(
                f"{path}: gap of {info.begin - position} bytes {where}"
                + ("" if previous else f" (tensor {name} starts at byte {info.begin}, the data starts at 0)")
                + f"; {_REDOWNLOAD}"
            )
        position, previous = info.end, name
    if position > data_bytes:
        raise CheckpointError(f"{path} is truncated: its header promises {position} bytes of data, the file has "
                              f"{data_bytes}; download it again")
    if position < data_bytes:
        raise CheckpointError(f"{path} has {data_bytes - position} bytes after the last tensor; {_REDOWNLOAD}")


class _Shard:
    """One safetensors file: its header, parsed and checked against the format's rules and the file size."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise CheckpointError(f"missing safetensors shard {path}; download the checkpoint again")
        self.path = path
        size = path.stat().st_size
        try:
            with path.open("rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > MAX_HEADER_BYTES:
                    raise ValueError(f"header of {header_len} bytes, the format allows at most {MAX_HEADER_BYTES}")
                if header_len == 0 or 8 + header_len > size:
                    raise ValueError("header length past the end of the file")
                header = json.loads(f.read(header_len), object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise CheckpointError(f"{path}: {e.args[0]!r} appears twice in the header; {_REDOWNLOAD}") from e
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({e}); it is probably truncated, download it again"
            ) from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: the header must be a JSON object, not {_json_kind(header)}; {_REDOWNLOAD}")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise CheckpointError(f"{path}: __metadata__ must be an object of strings, not {_json_kind(metadata)}; "
                                  f"{_REDOWNLOAD}")
        self.data_start = 8 + header_len
        self.entries = {name: _tensor_info(path, name, entry) for name, entry in header.items()}
        _check_layout(path, self.entries, size - self.data_start)

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` in a new array of its own (the file is opened for this read only)."""
        info = self.entries[name]
        raw = np.empty(info.end - info.begin, dtype=np.uint8)
        view, done = memoryview(raw), 0
        with self.path.open("rb", buffering=0) as f:
            f.seek(self.data_start + info.begin)
            while done < len(raw):  # one read() returns at most ~2 GB on Linux
                got = f.readinto(view[done:])
                if not got:
                    raise CheckpointError(f"{self.path} ended while reading tensor {name}; the file changed or was "
                                          "truncated after it was checked, download it again")
                done += got
        return raw.view(info.dtype).reshape(info.shape)


def check_checkpoint_shards(root: str | Path) -> None:
    """Refuses a checkpoint whose DiT, text encoder or VAE index names a shard the folder does not hold (a partial
    download), before any model loads: a run would otherwise load the other models and encode its prompts first. A
    part without an index (one file, or our conversion) passes."""
    root = Path(root)
    for folder in (dit_folder(root), root / TEXT_ENCODER, root / VAE):
        for index in sorted(folder.glob("*.safetensors.index.json")):
            _indexed_shards(index)


def _indexed_shards(index: Path) -> list[Path]:
    """The shard files a `*.safetensors.index.json` names, refusing names that leave its folder."""
    try:
        raw = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index} is not a valid safetensors index ({e}); download it again") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{index} must hold a JSON object, not {_json_kind(raw)}; download it again")
    if "weight_map" not in raw:
        raise CheckpointError(f"{index} has no weight_map; download it again")
    weight_map = raw["weight_map"]
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map must be an object of tensor name -> shard file, "
                              f"not {_json_kind(weight_map)}; download it again")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"{index}: weight_map entry {tensor!r} -> {json.dumps(shard)} must be a file name; "
                                  "download the index again")
        if not names_a_file_inside(shard):
            raise CheckpointError(
                f"{index}: weight_map entry {tensor!r} names shard {shard}, which is outside {index.parent}; a "
                "checkpoint may only name files in its own folder. Download the checkpoint again from its source"
            )
    folder = index.parent
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is missing shard(s) {missing} listed in {index.name}; download the checkpoint again")
    return [folder / n for n in names]


class SafetensorsCheckpoint:
    """The tensors of one checkpoint part: a folder (sharded or single file) or one `.safetensors` file.

    `names()`, `shape(name)`, `dtype(name)` and `require_float` need no tensor data; `read(name)` reads one
    tensor into a new array.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = self._shard_files(path)
        else:
            raise CheckpointError(f"checkpoint path {path} does not exist")
        self.path = path
        self._where: dict[str, _Shard] = {}
        for file in files:
            shard = _Shard(file)
            for name in shard.entries:
                if name in self._where:
                    raise CheckpointError(f"tensor {name} appears in two shards ({file} and {self._where[name].path})")
                self._where[name] = shard
        if not self._where:
            raise CheckpointError(f"no tensors found in {path}")

    @staticmethod
    def _shard_files(folder: Path) -> list[Path]:
        indexes = sorted(folder.glob(f"*{_INDEX_SUFFIX}"))
        if len(indexes) > 1:
            raise CheckpointError(f"{folder} has several safetensors indexes {indexes}; keep one")
        if indexes:
            return _indexed_shards(indexes[0])
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no .safetensors file in {folder}")
        return files

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name).shape

    def dtype(self, name: str) -> np.dtype:
        return self._info(name).dtype

    def nbytes(self) -> int:
        """The size of all tensor data (what a conversion writes, before compression)."""
        return sum(shard.entries[name].end - shard.entries[name].begin for name, shard in self._where.items())

    def require_float(self, names: Iterable[str], what: str) -> None:
        """Refuses, from the headers alone, any of `names` whose dtype is not a float type: `what` (e.g.
        "the DiT") has a float parameter there, and casting integers to it would load nonsense silently."""
        for name in names:
            info = self._info(name)
            if info.dtype_name not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"{self._where[name].path}: tensor {name} has dtype {info.dtype_name} where {what} has a float "
                    "parameter; the file is damaged or not a LongCat-Video checkpoint, download it again"
                )

    def read(self, name: str) -> np.ndarray:
        self._info(name)
        return self._where[name].read(name)

    def _info(self, name: str) -> TensorInfo:
        if name not in self._where:
            raise CheckpointError(f"tensor {name} not found in {self.path}")
        return self._where[name].entries[name]
