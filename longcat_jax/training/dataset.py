"""The training clips of a data folder: videos and their captions, and the entries that cannot be used.

Two layouts, as community video trainers use them:

- `name.mp4` with `name.txt` beside it (the caption), in the folder or any subfolder;
- a `metadata.jsonl` in the folder: one JSON object a line with the video's path relative to the folder
  (`file_name`, `file` or `video`) and its caption (`caption`, `text` or `prompt`). When it exists it is the
  whole list; other files in the folder are ignored.

Nothing is read here beyond file names, captions and the metadata: a video that exists but cannot be decoded is
found by the prepare step. Every entry that cannot be used is returned as a `SkippedClip` with the reason.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from longcat_jax.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")
METADATA_NAME = "metadata.jsonl"
PATH_KEYS = ("file_name", "file", "video")
CAPTION_KEYS = ("caption", "text", "prompt")


@dataclasses.dataclass(frozen=True)
class Clip:
    """One training video and its caption; `key` (the path relative to the data folder) names it everywhere."""

    key: str
    video: Path
    caption: str

    def stamp(self) -> tuple[int, int, str]:
        """(video file size, its modification time in ns, caption): what tells an encoded clip is still this one."""
        stat = self.video.stat()
        return stat.st_size, stat.st_mtime_ns, self.caption


@dataclasses.dataclass(frozen=True)
class SkippedClip:
    """An entry of the data folder that is not trained on, and why.

    stamp: the `Clip.stamp` of a clip skipped when it was encoded (too short, unreadable, too slow), so training
    notices the video or caption changing since; None for an entry skipped before (no caption, a bad metadata line).
    """

    source: str
    reason: str
    stamp: tuple[int, int, str] | None = None


def discover_clips(folder: str | Path) -> tuple[list[Clip], list[SkippedClip]]:
    """(usable clips sorted by key, skipped entries) of a data folder; refuses a missing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"data folder {folder} not found; set 'data.folder' to a folder of videos with captions")
    metadata = folder / METADATA_NAME
    if metadata.is_file():
        clips, skipped = _from_metadata(folder, metadata)
    else:
        clips, skipped = _from_caption_files(folder)
    return sorted(clips, key=lambda c: c.key), skipped


def _from_caption_files(folder: Path) -> tuple[list[Clip], list[SkippedClip]]:
    clips, skipped = [], []
    for video in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES):
        key = video.relative_to(folder).as_posix()
        caption_file = video.with_suffix(".txt")
        if not caption_file.is_file():
            skipped.append(SkippedClip(key, f"no caption: {caption_file.name} is missing"))
            continue
        try:
            caption = caption_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            skipped.append(SkippedClip(key, f"caption {caption_file.name} is unreadable ({err})"))
            continue
        if not caption:
            skipped.append(SkippedClip(key, f"caption {caption_file.name} is empty"))
            continue
        clips.append(Clip(key, video, caption))
    return clips, skipped


def _from_metadata(folder: Path, metadata: Path) -> tuple[list[Clip], list[SkippedClip]]:
    clips, skipped, seen = [], [], set()
    try:
        lines = metadata.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {metadata} ({err}); write it as UTF-8 JSON lines") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{METADATA_NAME}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            skipped.append(SkippedClip(where, f"not valid JSON ({err.msg})"))
            continue
        name = _first(entry, PATH_KEYS)
        caption = _first(entry, CAPTION_KEYS)
        if name is None:
            skipped.append(SkippedClip(where, f"no video path (one of {list(PATH_KEYS)})"))
            continue
        video = folder / name
        key = Path(name).as_posix()
        if caption is None or not caption.strip():
            skipped.append(SkippedClip(key, f"{where}: no caption (one of {list(CAPTION_KEYS)})"))
        elif not video.is_file():
            skipped.append(SkippedClip(key, f"{where}: video file {video} not found"))
        elif key in seen:
            skipped.append(SkippedClip(key, f"{where}: listed twice; the first entry is used"))
        else:
            seen.add(key)
            clips.append(Clip(key, video, caption.strip()))
    return clips, skipped


def _first(entry, keys: tuple[str, ...]) -> str | None:
    if not isinstance(entry, dict):
        return None
    for key in keys:
        if isinstance(entry.get(key), str):
            return entry[key]
    return None
