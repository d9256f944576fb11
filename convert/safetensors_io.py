"""Lazy, validated reading of (sharded) safetensors checkpoints, one tensor at a time.

The original LongCat checkpoint stores each part (`dit/`, `vae/`, `text_encoder/`, `lora/`) as one
safetensors file or as shards with a `*.safetensors.index.json`. Tensors are memory-mapped and read
one by one, so a 27 GB model is never resident at once. Every shard is checked up front (present,
header readable, file long enough for its tensors) so a truncated download fails before any work.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from longcat_jax.errors import CheckpointError

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


class _Shard:
    """One safetensors file: its header, parsed and checked against the file size."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise CheckpointError(f"missing safetensors shard {path}; download the checkpoint again")
        self.path = path
        size = path.stat().st_size
        try:
            with path.open("rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len <= 0 or 8 + header_len > size:
                    raise ValueError("header length past the end of the file")
                header = json.loads(f.read(header_len))
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({e}); it is probably truncated, "
                "download it again"
            ) from e
        header.pop("__metadata__", None)
        self.data_start = 8 + header_len
        self.entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        end_max = 0
        for name, info in header.items():
            if info["dtype"] not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            dtype, shape = _DTYPES[info["dtype"]], tuple(info["shape"])
            begin, end = info["data_offsets"]
            if not 0 <= begin <= end or end - begin != dtype.itemsize * math.prod(shape):
                raise CheckpointError(
                    f"{path}: tensor {name} of shape {shape} and dtype {info['dtype']} cannot span bytes "
                    f"{begin}..{end}; the header is damaged, download the file again"
                )
            self.entries[name] = (dtype, shape, begin, end)
            end_max = max(end_max, end)
        if self.data_start + end_max > size:
            raise CheckpointError(
                f"{path} is truncated: its header promises {self.data_start + end_max} bytes, "
                f"the file has {size}; download it again"
            )
        self._mmap: np.memmap | None = None

    def read(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[name]
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._mmap[self.data_start + begin : self.data_start + end]
        return np.frombuffer(raw, dtype=dtype).reshape(shape)


class SafetensorsCheckpoint:
    """The tensors of one checkpoint part: a folder (sharded or single file) or one `.safetensors` file.

    `names()`, `shape(name)` and `dtype(name)` need no tensor data; `read(name)` maps one tensor
    (a read-only view into the file, copied by the caller only if it must be).
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
        indexes = sorted(folder.glob("*.safetensors.index.json"))
        if len(indexes) > 1:
            raise CheckpointError(f"{folder} has several safetensors indexes {indexes}; keep one")
        if indexes:
            try:
                weight_map = json.loads(indexes[0].read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{indexes[0]} is not a valid safetensors index ({e})") from e
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise CheckpointError(
                    f"{folder} is missing shard(s) {missing} listed in {indexes[0].name}; "
                    "download the checkpoint again"
                )
            return [folder / n for n in names]
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no .safetensors file in {folder}")
        return files

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1]

    def dtype(self, name: str) -> np.dtype:
        return self._entry(name)[0]

    def read(self, name: str) -> np.ndarray:
        self._entry(name)
        return self._where[name].read(name)

    def _entry(self, name: str):
        if name not in self._where:
            raise CheckpointError(f"tensor {name} not found in {self.path}")
        return self._where[name].entries[name]
