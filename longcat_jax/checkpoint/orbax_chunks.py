"""Our converted checkpoint format: a folder of small Orbax checkpoints written and read one group at a time.

A single Orbax save needs the whole tree in memory; a 27 GB DiT must convert with less RAM than
that. So a part (dit/, vae/, text_encoder/, a LoRA) is written as a sequence of chunks, each an
ordinary Orbax PyTree checkpoint holding the tensors of one group (one block: the path up to its
first integer index), plus `longcat_index.json` listing every tensor's path, chunk, shape and dtype and
every chunk file's size and CRC32 (verified before the chunk is read), and the part's `config.json`.

The folder is assembled as `<name>.partial` and renamed at the end, so an interrupted conversion never
looks complete. `<name>.partial/progress.json` records the chunks finished so far: `save_part(...,
resume=True)` continues after them instead of starting again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from longcat_jax.checkpoint.disk import out_of_space, require_space, writing
from longcat_jax.checkpoint.file_checksums import FileRecord, folder_checksums, verify_folder
from longcat_jax.checkpoint.interrupts import deferred_interrupts
from longcat_jax.checkpoint.layout import names_a_file_inside
from longcat_jax.checkpoint.param_tree import ParamPath, path_str
from longcat_jax.errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = "longcat-jax/orbax-chunks/2"  # 2: file checksums per chunk
INDEX_NAME = "longcat_index.json"
CONFIG_NAME = "config.json"
CHUNKS_DIR = "chunks"
PROGRESS_NAME = "progress.json"
PARTIAL_SUFFIX = ".partial"
DEFAULT_MAX_CHUNK_BYTES = 1 << 30
_SPACE_MARGIN = 4 << 20  # Orbax's metadata files beside a chunk's data

_DTYPES = {
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),  # a float dtype safetensors may hold (F8_E5M2): kept as given
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


def partial_dir(dst: Path) -> Path:
    """Where `save_part` assembles `dst` (renamed to `dst` when complete)."""
    return dst.with_name(dst.name + PARTIAL_SUFFIX)


def chunk_name(chunk: int) -> str:
    return f"{chunk:05d}"


def _dtype_name(dtype: np.dtype) -> str:
    for name, known in _DTYPES.items():
        if known == dtype:
            return name
    raise CheckpointError(f"cannot store dtype {dtype}; supported: {sorted(_DTYPES)}")


class _HeldBack(logging.Filter):
    """Keeps the records of a logger instead of emitting them, to decide after the call."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextlib.contextmanager
def _orbax_quiet():
    """Orbax reports every save and load at INFO through absl (138 lines to load one checkpoint); they show only
    when this module's logger is at DEBUG. Its warnings and errors are held back during the call and emitted
    after it, except when the call ran out of disk space: the caller reports that in one line, where Orbax's
    threads would log a traceback each. The absl logger is restored afterwards."""
    absl = logging.getLogger("absl")
    previous, held = absl.level, _HeldBack()
    if not logger.isEnabledFor(logging.DEBUG):
        absl.setLevel(max(previous, logging.WARNING))
        absl.addFilter(held)
    try:
        yield
    except Exception as e:
        if out_of_space(e):
            held.records.clear()
        raise
    finally:
        absl.removeFilter(held)
        absl.setLevel(previous)
        for record in held.records:
            absl.handle(record)


_RESUME_FIX = "free some space, then resume (`python -m convert SRC DST --resume` keeps the finished chunks)"


def _save_chunk(checkpointer: ocp.PyTreeCheckpointer, directory: Path, arrays: dict[str, np.ndarray]) -> None:
    checkpointer.save(directory, arrays)


def _write_json(path: Path, value: Any) -> None:
    """Writes JSON atomically (a temporary file renamed over `path`)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _load_progress(tmp: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, FileRecord]]] | None:
    """The entries and chunk checksums an interrupted `save_part` finished in `tmp`, or None if nothing
    usable is there. Chunk folders the progress does not list (a save cut short) are removed."""
    try:
        progress = json.loads((tmp / PROGRESS_NAME).read_text())
        entries, chunks = _validated_index(tmp / PROGRESS_NAME, progress, require_all_chunks=True)
    except (FileNotFoundError, json.JSONDecodeError, CheckpointError) as e:
        logger.warning("%s holds no usable progress (%s); starting that part again", tmp, e)
        return None
    for leftover in sorted((tmp / CHUNKS_DIR).iterdir()) if (tmp / CHUNKS_DIR).is_dir() else []:
        if leftover.name in chunks:
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    return entries, dict(chunks)


def partial_bytes(dst: str | Path) -> int:
    """Bytes of the chunks an interrupted `save_part` of `dst` finished (0 if none): what a resume keeps."""
    try:
        chunks = json.loads((partial_dir(Path(dst)) / PROGRESS_NAME).read_text())["chunks"]
        return sum(record["size"] for files in chunks.values() for record in files.values())
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return 0


def finished_tensors(dst: str | Path) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """(path, array) of the tensors an interrupted `save_part` of `dst` finished (in `<dst>.partial`), in the order
    it wrote them, one chunk in memory at a time, each chunk verified against its checksums; nothing if there are
    none. Read when first iterated, so a resumed `save_part` started before then has dropped what it does not keep;
    a stream that is resumed can take back what it wrote instead of computing it again (GPTQ's rounded kernels)."""
    tmp = partial_dir(Path(dst))
    try:
        progress = json.loads((tmp / PROGRESS_NAME).read_text())
        entries, chunks = _validated_index(tmp / PROGRESS_NAME, progress, require_all_chunks=True)
    except (FileNotFoundError, json.JSONDecodeError, CheckpointError):
        return
    with _orbax_quiet():
        checkpointer = ocp.PyTreeCheckpointer()
    for chunk in sorted({entry["chunk"] for entry in entries}):
        name = chunk_name(chunk)
        _verify_chunk(tmp, name, chunks[name])
        yield from _restore_chunk(checkpointer, tmp, name, [entry for entry in entries if entry["chunk"] == chunk])


def save_part(
    tensors: Iterable[tuple[ParamPath, np.ndarray]],
    dst_dir: str | Path,
    config_dict: Mapping[str, Any],
    *,
    total: int | None = None,
    desc: str = "converting",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Writes (path, array) pairs as our checkpoint in `dst_dir`, holding at most one group in memory.

    Dtypes are kept as given (bf16 stays bf16). `total` (number of tensors) sizes the progress bar, shown
    when `progress`. Refuses an existing `dst_dir` so nothing is overwritten by accident. With `resume`,
    the chunks an interrupted call finished in `<dst_dir>.partial` are kept and their tensors skipped
    (`tensors` must give the same paths, shapes and dtypes in the same order); otherwise that folder is
    cleared. An interrupted or failed call keeps `<dst_dir>.partial` if it finished a chunk.
    """
    dst = Path(dst_dir)
    if dst.exists():
        raise CheckpointError(f"{dst} already exists; remove it or choose another destination")
    tmp = partial_dir(dst)
    state = _load_progress(tmp) if resume and tmp.is_dir() else None
    if state is None:
        if tmp.exists():
            shutil.rmtree(tmp)
        state = ([], {})
    (tmp / CHUNKS_DIR).mkdir(parents=True, exist_ok=True)
    done, chunk_files = state  # entries of finished chunks; {chunk name: {file: record}}
    skip = len(done)
    with _orbax_quiet():
        checkpointer = ocp.PyTreeCheckpointer()
    entries = list(done)
    seen: set[ParamPath] = set()
    buffer: dict[str, np.ndarray] = {}  # the open chunk: storage key -> array
    buffer_bytes = 0
    buffer_group: ParamPath | None = None

    def flush():
        nonlocal buffer, buffer_bytes
        if buffer:
            name = chunk_name(len(chunk_files))
            require_space(tmp, buffer_bytes + _SPACE_MARGIN, what=f"chunk {name}", fix=_RESUME_FIX)
            with deferred_interrupts(), writing(dst, fix=_RESUME_FIX), _orbax_quiet():
                _save_chunk(checkpointer, (tmp / CHUNKS_DIR / name).absolute(), buffer)
                chunk_files[name] = folder_checksums(tmp / CHUNKS_DIR / name)
                _write_json(tmp / PROGRESS_NAME, {"format": FORMAT, "tensors": _jsonable(entries), "chunks": chunk_files})
        buffer, buffer_bytes = {}, 0

    try:
        with tqdm(total=total, desc=desc, unit="tensor", leave=False, disable=not progress) as bar:
            for i, (path, array) in enumerate(tensors):
                path = tuple(path)
                if path in seen:
                    raise CheckpointError(f"tensor {path_str(path)} given twice while writing {dst}")
                seen.add(path)
                array = np.asarray(array, order="C")  # (keeps 0-d arrays 0-d)
                if i < skip:
                    _check_resumed(dst, done[i], path, array)
                    bar.update(1)
                    continue
                if i == skip and skip:
                    logger.info("%s: resuming after %d finished chunks (%d tensors)", dst, len(chunk_files), skip)
                group = group_of(path)
                if buffer and (group != buffer_group or buffer_bytes + array.nbytes > max_chunk_bytes):
                    flush()
                buffer_group = group
                key = f"t{len(entries):06d}"
                buffer[key] = array
                buffer_bytes += array.nbytes
                entries.append({"path": path, "key": key, "chunk": len(chunk_files), "shape": list(array.shape),
                                "dtype": _dtype_name(array.dtype)})
                bar.update(1)
            flush()
        if len(seen) < skip:
            raise CheckpointError(f"cannot resume {dst}: the source now has {len(seen)} tensors, the interrupted "
                                  f"conversion had written {skip}; convert again without --resume")
        if not entries:
            raise CheckpointError(f"nothing to write to {dst}: the source gave no tensors")
        with writing(dst, fix=_RESUME_FIX):
            _write_json(tmp / INDEX_NAME, {"format": FORMAT, "tensors": _jsonable(entries), "chunks": chunk_files})
            (tmp / CONFIG_NAME).write_text(json.dumps(dict(config_dict), indent=2, sort_keys=True))
    except BaseException:
        if not chunk_files:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / PROGRESS_NAME).unlink(missing_ok=True)
    tmp.rename(dst)
    logger.info("wrote %d tensors to %s", len(entries), dst)
    return dst


def _jsonable(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**entry, "path": list(entry["path"])} for entry in entries]


def _check_resumed(dst: Path, done: dict[str, Any], path: ParamPath, array: np.ndarray) -> None:
    """A tensor skipped on resume must be the one the interrupted call wrote at that place."""
    if path != done["path"] or list(array.shape) != done["shape"] or _dtype_name(array.dtype) != done["dtype"]:
        raise CheckpointError(
            f"cannot resume {dst}: the source now gives {path_str(path)} {list(array.shape)} {array.dtype} where "
            f"the interrupted conversion wrote {path_str(done['path'])} {done['shape']} {done['dtype']}; the source "
            "changed, convert again without --resume"
        )


def is_converted(path: str | Path) -> bool:
    """True if `path` is a folder written by `save_part`."""
    return (Path(path) / INDEX_NAME).is_file()


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one tensor entry of an index, or None."""
    if not isinstance(entry, dict):
        return "it is not an object"
    path = entry.get("path")
    if not isinstance(path, list) or not path or not all(isinstance(p, str) or _is_count(p) for p in path):
        return f"path {path!r}"
    if not isinstance(entry.get("key"), str):
        return f"key {entry.get('key')!r}"
    if not _is_count(entry.get("chunk")):
        return f"chunk {entry.get('chunk')!r}"
    if not isinstance(entry.get("shape"), list) or not all(_is_count(d) for d in entry["shape"]):
        return f"shape {entry.get('shape')!r}"
    if entry.get("dtype") not in _DTYPES:
        return f"dtype {entry.get('dtype')!r}"
    return None


def _chunks_problem(chunks: Any) -> str | None:
    if not isinstance(chunks, dict):
        return "no checksums (chunks is not an object)"
    for name, files in chunks.items():
        if not isinstance(files, dict):
            return f"chunk {name}: its file list is not an object"
        for file, record in files.items():
            if not names_a_file_inside(file):
                return f"chunk {name}: file {file} is outside the chunk's folder"
            if not isinstance(record, dict) or not _is_count(record.get("size")) or not _is_count(record.get("crc32")):
                return f"chunk {name}: file {file} has no valid size and crc32"
    return None


def _validated_index(source: Path, index: Any, *, require_all_chunks: bool = False):
    """(entries with tuple paths, {chunk name: {file: record}}) of a parsed index, or a CheckpointError."""
    if not isinstance(index, dict):
        raise CheckpointError(f"{source} must hold a JSON object; it is damaged, convert again")
    if index.get("format") != FORMAT:
        raise CheckpointError(f"{source} has format {index.get('format')!r}, this version reads {FORMAT!r} (with "
                              "checksums); convert again")
    entries = index.get("tensors")
    if not isinstance(entries, list):
        raise CheckpointError(f"{source}: tensors must be a list; the index is damaged, convert again")
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem:
            raise CheckpointError(f"{source}: entry {i} has a bad {problem}; the index is damaged, convert again")
    if "chunks" not in index:
        raise CheckpointError(f"{source} has no checksums; it was written by an older version, convert again")
    problem = _chunks_problem(index["chunks"])
    if problem:
        raise CheckpointError(f"{source}: {problem}; the index is damaged, convert again")
    chunks = index["chunks"]
    unrecorded = sorted({chunk_name(e["chunk"]) for e in entries} - set(chunks))
    if unrecorded or (require_all_chunks and sorted(chunks) != [chunk_name(i) for i in range(len(chunks))]):
        raise CheckpointError(f"{source}: no checksums for chunk(s) {unrecorded or sorted(chunks)}; the index is "
                              "damaged, convert again")
    return [{**e, "path": tuple(e["path"])} for e in entries], chunks


def _read_index_file(path: Path):
    try:
        index = json.loads((path / INDEX_NAME).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is not a converted checkpoint (no {INDEX_NAME})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / INDEX_NAME} is damaged ({e}); convert again") from e
    return _validated_index(path / INDEX_NAME, index)


def read_index(path: str | Path) -> list[dict[str, Any]]:
    """The validated tensor list of a converted part."""
    return _read_index_file(Path(path))[0]


def _verify_chunk(part: Path, name: str, files: Mapping[str, FileRecord]) -> None:
    chunk_dir = (part / CHUNKS_DIR / name).absolute()
    if not chunk_dir.is_dir():
        raise CheckpointError(f"{part}: chunk {name} is missing; the copy is incomplete, convert again")
    verify_folder(chunk_dir, files, shown_from=part.absolute(), what=f"chunk {name}")


def iter_part(path: str | Path) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """(path, numpy array) of every tensor of a converted part, one chunk (group) in memory at a time.

    Each chunk's files are checked against their recorded sizes and CRC32s before Orbax reads them. The
    check of the next chunk runs in a background thread while this one is read and used (zlib releases the
    GIL), so on a machine with a spare core it adds little to the loading time."""
    path = Path(path)
    entries, chunk_files = _read_index_file(path)
    with _orbax_quiet():
        checkpointer = ocp.PyTreeCheckpointer()
    by_chunk: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        by_chunk.setdefault(entry["chunk"], []).append(entry)
    if not by_chunk:
        raise CheckpointError(f"{path / INDEX_NAME} lists no tensors; convert again")
    names = [chunk_name(chunk) for chunk in sorted(by_chunk)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-chunks") as verifier:
        checks = {names[0]: verifier.submit(_verify_chunk, path, names[0], chunk_files[names[0]])}
        try:
            for i, chunk in enumerate(sorted(by_chunk)):
                name = names[i]
                checks.pop(name).result()
                if i + 1 < len(names):
                    checks[names[i + 1]] = verifier.submit(_verify_chunk, path, names[i + 1], chunk_files[names[i + 1]])
                yield from _restore_chunk(checkpointer, path, name, by_chunk[chunk])
        finally:
            for pending in checks.values():
                pending.cancel()


def _restore_chunk(checkpointer, part: Path, name: str, chunk_entries: list[dict[str, Any]]):
    """(path, array) of one verified chunk's tensors, checked against the index."""
    chunk_dir = (part / CHUNKS_DIR / name).absolute()
    try:
        with deferred_interrupts(), _orbax_quiet():
            restored = checkpointer.restore(
                chunk_dir, restore_args={e["key"]: ocp.RestoreArgs(restore_type=np.ndarray) for e in chunk_entries}
            )
    except Exception as e:  # Orbax/tensorstore raise many types for damaged files.
        raise CheckpointError(f"{part}: chunk {name} cannot be read ({e}); convert again") from e
    for entry in chunk_entries:
        array = restored.get(entry["key"])
        if array is None or tuple(array.shape) != tuple(entry["shape"]) or _dtype_name(array.dtype) != entry["dtype"]:
            raise CheckpointError(
                f"{part}: tensor {path_str(entry['path'])} in chunk {name} does not match the index; convert again"
            )
        yield entry["path"], array
