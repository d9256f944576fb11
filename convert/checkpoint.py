"""Our converted checkpoint format: a folder of small Orbax checkpoints written and read one group at a time.

A single Orbax save needs the whole tree in memory; a 27 GB DiT must convert with less RAM than
that. So a part (dit/, vae/, text_encoder/, a LoRA) is written as a sequence of chunks, each an
ordinary Orbax PyTree checkpoint holding the tensors of one group (one block: the path up to its
first integer index), plus `longcat_index.json` listing every tensor's path, chunk, shape and dtype,
and the part's `config.json`. The folder is assembled under a temporary name and renamed at the end,
so an interrupted conversion never looks complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from convert.param_tree import ParamPath, path_str
from longcat_jax.errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = "longcat-jax/orbax-chunks/1"
INDEX_NAME = "longcat_index.json"
CONFIG_NAME = "config.json"
CHUNKS_DIR = "chunks"
DEFAULT_MAX_CHUNK_BYTES = 1 << 30

_DTYPES = {
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}


def group_of(path: ParamPath) -> ParamPath:
    """The group a tensor is stored with: its path up to the first integer (one block), else its first name."""
    for i, part in enumerate(path):
        if isinstance(part, int):
            return tuple(path[: i + 1])
    return tuple(path[:1])


def _dtype_name(dtype: np.dtype) -> str:
    for name, known in _DTYPES.items():
        if known == dtype:
            return name
    raise CheckpointError(f"cannot store dtype {dtype}; supported: {sorted(_DTYPES)}")


def _checkpointer() -> ocp.PyTreeCheckpointer:
    return ocp.PyTreeCheckpointer()


def save_part(
    tensors: Iterable[tuple[ParamPath, np.ndarray]],
    dst_dir: str | Path,
    config_dict: Mapping[str, Any],
    *,
    total: int | None = None,
    desc: str = "converting",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> Path:
    """Writes (path, array) pairs as our checkpoint in `dst_dir`, holding at most one group in memory.

    Dtypes are kept as given (bf16 stays bf16). `total` (number of tensors) sizes the progress bar.
    Refuses an existing `dst_dir` so nothing is overwritten by accident.
    """
    dst = Path(dst_dir)
    if dst.exists():
        raise CheckpointError(f"{dst} already exists; remove it or choose another destination")
    tmp = dst.with_name(dst.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / CHUNKS_DIR).mkdir(parents=True)
    checkpointer = _checkpointer()
    entries: list[dict[str, Any]] = []
    seen: set[ParamPath] = set()
    buffer: dict[str, np.ndarray] = {}  # the open chunk: storage key -> array
    buffer_bytes = 0
    buffer_group: ParamPath | None = None
    chunk = 0

    def flush():
        nonlocal buffer, buffer_bytes, chunk
        if buffer:
            checkpointer.save((tmp / CHUNKS_DIR / f"{chunk:05d}").absolute(), buffer)
            chunk += 1
        buffer, buffer_bytes = {}, 0

    try:
        with tqdm(total=total, desc=desc, unit="tensor", leave=False) as bar:
            for path, array in tensors:
                path = tuple(path)
                if path in seen:
                    raise CheckpointError(f"tensor {path_str(path)} given twice while writing {dst}")
                seen.add(path)
                array = np.asarray(array, order="C")  # (keeps 0-d arrays 0-d)
                group = group_of(path)
                if buffer and (group != buffer_group or buffer_bytes + array.nbytes > max_chunk_bytes):
                    flush()
                buffer_group = group
                key = f"t{len(entries):06d}"
                buffer[key] = array
                buffer_bytes += array.nbytes
                entries.append(
                    {"path": list(path), "key": key, "chunk": chunk, "shape": list(array.shape),
                     "dtype": _dtype_name(array.dtype)}
                )
                bar.update(1)
            flush()
        if not entries:
            raise CheckpointError(f"nothing to write to {dst}: the source gave no tensors")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / INDEX_NAME).write_text(json.dumps({"format": FORMAT, "tensors": entries}, indent=1))
    (tmp / CONFIG_NAME).write_text(json.dumps(dict(config_dict), indent=2, sort_keys=True))
    tmp.rename(dst)
    logger.info("wrote %d tensors to %s", len(entries), dst)
    return dst


def is_converted(path: str | Path) -> bool:
    """True if `path` is a folder written by `save_part`."""
    return (Path(path) / INDEX_NAME).is_file()


def read_index(path: str | Path) -> list[dict[str, Any]]:
    """The validated tensor list of a converted part."""
    path = Path(path)
    try:
        index = json.loads((path / INDEX_NAME).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is not a converted checkpoint (no {INDEX_NAME})") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / INDEX_NAME} is damaged ({e}); convert again") from e
    if index.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {index.get('format')!r}, this version reads {FORMAT!r}; convert again")
    entries = index["tensors"]
    for entry in entries:
        entry["path"] = tuple(entry["path"])
    return entries


def read_config(path: str | Path) -> dict[str, Any]:
    """The config dict stored with a converted part."""
    try:
        return json.loads((Path(path) / CONFIG_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} has no readable {CONFIG_NAME} ({e}); convert again") from e


def iter_part(path: str | Path) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """(path, numpy array) of every tensor of a converted part, one chunk (group) in memory at a time."""
    path = Path(path)
    entries = read_index(path)
    checkpointer = _checkpointer()
    by_chunk: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        by_chunk.setdefault(entry["chunk"], []).append(entry)
    for chunk, chunk_entries in sorted(by_chunk.items()):
        chunk_dir = (path / CHUNKS_DIR / f"{chunk:05d}").absolute()
        if not chunk_dir.is_dir():
            raise CheckpointError(f"{path}: chunk {chunk_dir.name} is missing; the copy is incomplete, convert again")
        try:
            restored = checkpointer.restore(
                chunk_dir, restore_args={e["key"]: ocp.RestoreArgs(restore_type=np.ndarray) for e in chunk_entries}
            )
        except Exception as e:  # Orbax/tensorstore raise many types for damaged files.
            raise CheckpointError(f"{path}: chunk {chunk_dir.name} cannot be read ({e}); convert again") from e
        for entry in chunk_entries:
            array = restored.get(entry["key"])
            if array is None or tuple(array.shape) != tuple(entry["shape"]) or _dtype_name(array.dtype) != entry["dtype"]:
                raise CheckpointError(
                    f"{path}: tensor {path_str(entry['path'])} in chunk {chunk_dir.name} does not match the index; "
                    "convert again"
                )
            yield entry["path"], array
        del restored
