"""The destination folder of a conversion: what is in it, and what a conversion may do with it.

While a conversion runs, `DST/.longcat-convert.partial` records its source (path and every file's size
and modification time). That marker is how a later run recognises an unfinished conversion of ours, to
resume it (`--resume`: finished parts and chunks are kept, if the source is unchanged) or to clear it and
start again. Any other non-empty destination is refused with what is there and what to do. A run that
ends before finishing anything leaves no folder it created behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from longcat_jax.checkpoint.layout import COPIED_PARTS, LORA_DIR, MODEL_PARTS
from longcat_jax.checkpoint.orbax_chunks import PARTIAL_SUFFIX, is_converted
from longcat_jax.errors import CheckpointError

logger = logging.getLogger(__name__)

MARKER = ".longcat-convert.partial"
_PARTS = (*MODEL_PARTS, *COPIED_PARTS)


@dataclasses.dataclass(frozen=True)
class Destination:
    path: Path
    created: bool  # this run made the folder, so it removes it again if it finishes nothing


def file_stamp(file: Path) -> list[int]:
    """[size, mtime_ns] of a file: what a resumed conversion compares to tell that an input did not change."""
    stat = file.stat()
    return [stat.st_size, stat.st_mtime_ns]


def source_fingerprint(src: Path, parts: Iterable[str]) -> dict[str, list[int]]:
    """{file relative to src: `file_stamp`} of every file of the parts converted or copied."""
    found = {}
    for part in parts:
        for file in sorted((src / part).rglob("*")):
            if file.is_file():
                found[file.relative_to(src).as_posix()] = file_stamp(file)
    return found


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def _ours(dst: Path, name: str) -> bool:
    """True if `dst/name` is something a conversion writes (a part, its .partial, the marker, lora/ of ours). A model
    part counts only converted (a conversion renames it into place when finished): the same name in an original
    download is not ours."""
    if name in MODEL_PARTS:
        return is_converted(dst / name)
    if name == MARKER or name.removesuffix(PARTIAL_SUFFIX) in _PARTS:
        return True
    if name != LORA_DIR or not (dst / LORA_DIR).is_dir():
        return False
    return all(p.is_dir() and (p.name.endswith(PARTIAL_SUFFIX) or is_converted(p)) for p in (dst / LORA_DIR).iterdir())


def _foreign(dst: Path) -> list[str]:
    return sorted(p.name for p in dst.iterdir() if not _ours(dst, p.name))


def describe_unfinished(dst: Path) -> str:
    """What an interrupted conversion left in `dst`, and what to do next."""
    if not (dst / MARKER).is_file():
        return "nothing was written"
    names = sorted(p.name for p in dst.iterdir() if p.name != MARKER)
    if (dst / LORA_DIR).is_dir():
        names = [n for n in names if n != LORA_DIR] + sorted(f"{LORA_DIR}/{p.name}" for p in (dst / LORA_DIR).iterdir())
    finished = [n for n in names if not n.endswith(PARTIAL_SUFFIX)]
    partial = [n.removesuffix(PARTIAL_SUFFIX) for n in names if n.endswith(PARTIAL_SUFFIX)]
    held = [f"finished: {', '.join(finished)}"] if finished else []
    held += [f"begun: {', '.join(partial)}"] if partial else []
    return (f"{dst} holds an unfinished conversion ({'; '.join(held) or 'nothing yet'}); run the same command with "
            f"--resume to continue it, or remove {dst}")


def _refuse_non_empty(dst: Path, *, resume: bool) -> None:
    names = sorted(p.name for p in dst.iterdir())
    foreign = _foreign(dst)
    prefix = "there is no unfinished conversion to resume: " if resume else ""
    if not foreign:
        raise CheckpointError(
            f"{prefix}destination {dst} already holds a finished conversion ({', '.join(names)}); use it as "
            "--model-path as it is, or choose a new folder (or remove this one) to convert again"
        )
    unconverted = [f"{name}/" for name in foreign if name in MODEL_PARTS]
    download = f" ({', '.join(unconverted)} not converted: it looks like an original download)" if unconverted else ""
    raise CheckpointError(f"{prefix}destination {dst} is not empty: it holds {_listing(foreign)}, which this "
                          f"converter did not write{download}; choose a new or empty folder")


def _check_resumable(dst: Path, src: Path, fingerprint: dict[str, list[int]], settings: dict[str, str]) -> None:
    try:
        marker = json.loads((dst / MARKER).read_text())
        source, recorded, begun_with = marker["source"], marker["files"], marker.get("settings", {})
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot resume: {dst / MARKER} is damaged ({e}); run again without --resume to "
                              "start over") from e
    if source != str(src.resolve()):
        raise CheckpointError(f"cannot resume: {dst} holds an unfinished conversion of {source}, not of {src}; pass "
                              "that source, or run again without --resume to start over")
    if begun_with != settings:
        raise CheckpointError(f"cannot resume: {dst} was begun with {begun_with}, this run asks for {settings}; pass "
                              "the same options, or run again without --resume to start over")
    changed = sorted(set(recorded) ^ set(fingerprint) | {f for f in recorded if recorded[f] != fingerprint.get(f)})
    if changed:
        raise CheckpointError(f"cannot resume: the source changed since {dst} was begun ({_listing(changed)}); run "
                              "again without --resume to start over")


def prepare(dst: Path, src: Path, fingerprint: dict[str, list[int]], *, resume: bool,
            settings: dict[str, str] | None = None) -> Destination:
    """Makes `dst` ready for a conversion of `src` (refusing what must not be touched) and writes the marker.

    `settings`: the conversion's options that change what is written (e.g. {"quantize": "int8"}); a resumed
    conversion must ask for the same."""
    settings = dict(settings or {})
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"destination {dst} is a file; choose a new folder")
    created = not dst.exists()
    if not created and (dst / MARKER).is_file():
        foreign = _foreign(dst)
        if foreign:
            raise CheckpointError(f"destination {dst} holds an unfinished conversion and also {_listing(foreign)}, "
                                  "which this converter did not write; remove those or choose another folder")
        if resume:
            _check_resumable(dst, src, fingerprint, settings)
            logger.info("resuming the unfinished conversion in %s", dst)
            return Destination(dst, created=False)
        logger.warning("%s holds an unfinished conversion; clearing it and starting again (pass --resume to "
                       "continue it instead)", dst)
        for entry in sorted(dst.iterdir()):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    elif not created and any(dst.iterdir()):
        _refuse_non_empty(dst, resume=resume)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / MARKER).write_text(json.dumps({"source": str(src.resolve()), "files": fingerprint, "settings": settings}))
    return Destination(dst, created)


def finish(destination: Destination) -> None:
    (destination.path / MARKER).unlink()


def clean_after_failure(destination: Destination) -> None:
    """After a run that failed or was interrupted: keep what can be resumed; if nothing was finished, remove
    the marker, and the folder too if this run created it (no empty destination folder is left behind)."""
    dst = destination.path
    if not (dst / MARKER).is_file():
        return
    lora = dst / LORA_DIR
    if lora.is_dir() and not any(lora.iterdir()):
        lora.rmdir()
    if any(p.name != MARKER for p in dst.iterdir()):
        return
    (dst / MARKER).unlink()
    if destination.created:
        dst.rmdir()
