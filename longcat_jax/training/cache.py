"""The prepared-data cache on disk: per-clip latents and text embeddings, and a manifest describing them.

    CACHE/manifest.json        format, fingerprint (what the encodings depend on), clips, skipped entries
    CACHE/skipped.txt          the skipped entries, one `source: reason` a line (for people)
    CACHE/clips/<name>.npz     latent_mean, latent_std [C, T, h, w] float32 (normalised, as the DiT sees latents),
                               text [n, C_text] float32 (the caption's n real tokens; padding is restored at load)

The fingerprint holds the checkpoint, sizes, frame count, frame rate and text length the clips were encoded for;
training refuses a cache whose fingerprint differs from its config, naming the key. Every clip (encoded or skipped
at encoding) records its video file's size and time and its caption, so training also refuses a cache that no
longer describes the data folder (clips added, removed, re-captioned or replaced since), naming them. Files are
written under a temporary name and renamed, so an interrupted prepare never leaves a half-written clip or manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from longcat_jax.errors import ConfigError, InputError
from longcat_jax.training.dataset import Clip, SkippedClip, discover_clips
from longcat_jax.video_io import atomic_file

logger = logging.getLogger(__name__)

CACHE_FORMAT = "longcat-jax/train-cache/1"
MANIFEST_NAME = "manifest.json"
SKIPPED_NAME = "skipped.txt"
CLIPS_DIR = "clips"
CHANGES_LISTED = 5  # differing clips named in the message of a cache that no longer fits the data folder


@dataclasses.dataclass(frozen=True)
class CachedClip:
    """One encoded clip: where its arrays are, their shapes, the source file's size and time it came from, and the
    video's frame rate its frames were picked at (0: the video gives none, with 'data.fps' null; None: prepared by
    a version before frames were picked by timestamp, which read some rates wrong)."""

    key: str
    file: str
    caption: str
    latent_shape: tuple[int, int, int, int]  # [C, T, h, w]
    text_tokens: int
    source_bytes: int
    source_mtime_ns: int
    source_fps: float | None = None

    @property
    def stamp(self) -> tuple[int, int, str]:
        """The `Clip.stamp` of the clip it was encoded from."""
        return self.source_bytes, self.source_mtime_ns, self.caption

    @property
    def bucket(self) -> tuple[int, int, int]:
        """(T, h, w) latent shape: clips of one bucket can share a batch."""
        return self.latent_shape[1:]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["latent_shape"] = list(self.latent_shape)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CachedClip:
        return cls(**{**raw, "latent_shape": tuple(raw["latent_shape"])})


@dataclasses.dataclass(frozen=True)
class CacheManifest:
    """What a prepare run produced."""

    fingerprint: dict[str, Any]
    clips: tuple[CachedClip, ...]
    skipped: tuple[SkippedClip, ...]

    def clips_digest(self) -> str:
        """A short hash of the clips (keys, shapes, captions, source files' size and frame rate): a checkpoint
        records it so that `--resume` warns about a changed dataset, a re-captioned or replaced clip included. Not
        the files' times: a copy with new times is the same data (`check_clips_current`)."""
        text = json.dumps([[c.key, list(c.latent_shape), c.caption, c.source_bytes, c.source_fps]
                           for c in self.clips])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def clip_file_name(key: str) -> str:
    """A file name for a clip key: readable, unique (a hash of the key), no path separators."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-80:]
    return f"{stem}.{hashlib.sha256(key.encode()).hexdigest()[:10]}.npz"


def write_clip(cache_dir: Path, name: str, latent_mean: np.ndarray, latent_std: np.ndarray, text: np.ndarray) -> None:
    """Writes one clip's arrays (see the module docstring) atomically."""
    with atomic_file(cache_dir / CLIPS_DIR / name) as temp, open(temp, "wb") as handle:
        np.savez(handle, latent_mean=np.asarray(latent_mean, np.float32), latent_std=np.asarray(latent_std, np.float32),
                 text=np.asarray(text, np.float32))


def read_clip(cache_dir: Path, clip: CachedClip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latent_mean [C, T, h, w], latent_std [C, T, h, w], text [n, C_text]) of a cached clip."""
    path = cache_dir / CLIPS_DIR / clip.file
    try:
        with np.load(path) as arrays:
            mean, std, text = arrays["latent_mean"], arrays["latent_std"], arrays["text"]
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"cached clip {path} ({clip.key}) is unreadable ({err}); run with --prepare again") from err
    if mean.shape != clip.latent_shape or std.shape != clip.latent_shape or text.shape[0] != clip.text_tokens:
        raise InputError(f"cached clip {path} does not match the manifest; run with --prepare again")
    return mean, std, text


def write_manifest(cache_dir: Path, manifest: CacheManifest) -> None:
    """Writes manifest.json and skipped.txt atomically."""
    body = {
        "format": CACHE_FORMAT,
        "fingerprint": manifest.fingerprint,
        "clips": [clip.to_json() for clip in manifest.clips],
        "skipped": [dataclasses.asdict(s) for s in manifest.skipped],
    }
    with atomic_file(cache_dir / MANIFEST_NAME) as temp:
        temp.write_text(json.dumps(body, indent=1))
    with atomic_file(cache_dir / SKIPPED_NAME) as temp:
        temp.write_text("".join(f"{s.source}: {s.reason}\n" for s in manifest.skipped))


def read_manifest(cache_dir: Path) -> CacheManifest | None:
    """The manifest of a cache folder, None when there is none yet."""
    path = cache_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        if body.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {body.get('format')!r}, expected {CACHE_FORMAT!r}")
        return CacheManifest(
            fingerprint=body["fingerprint"],
            clips=tuple(CachedClip.from_json(c) for c in body["clips"]),
            skipped=tuple(SkippedClip(**{**s, "stamp": tuple(s["stamp"]) if s.get("stamp") else None})
                          for s in body["skipped"]),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} is not a training cache manifest ({err}); delete the cache folder and run with "
                         "--prepare again") from err


def require_manifest(cache_dir: Path, fingerprint: dict[str, Any], config_source: str,
                     data_folder: Path) -> CacheManifest:
    """The manifest for training: present, encoded for this config and for the clips `data_folder` holds now,
    with clips (else the fix is named)."""
    manifest = read_manifest(cache_dir)
    prepare = f"python -m longcat_jax.train --config {config_source} --prepare"
    if manifest is None:
        raise InputError(f"no prepared data in {cache_dir}; encode the clips once with `{prepare}`")
    check_fingerprint(manifest.fingerprint, fingerprint, prepare)
    _check_clips_on_first_host(manifest, data_folder, prepare)
    if not manifest.clips:
        raise InputError(f"the prepared data in {cache_dir} holds no usable clip ({len(manifest.skipped)} skipped, "
                         f"see {cache_dir / SKIPPED_NAME}); fix the data folder and run `{prepare}`")
    return manifest


def _check_clips_on_first_host(manifest: CacheManifest, data_folder: Path, prepare: str) -> None:
    """`check_clips_current` on the first host (the others train from the cache alone and may not see the data
    folder); with several hosts its answer goes to all, so that every host refuses together rather than the others
    loading the DiT and then failing on a host that has stopped."""
    refusal = None
    if jax.process_index() == 0:
        try:
            check_clips_current(manifest, discover_clips(data_folder)[0], data_folder, prepare)
        except InputError as err:
            refusal = err
    if jax.process_count() > 1:
        refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
        if refused and refusal is None:
            raise InputError(f"the first host refused the prepared data (its log says why: the data folder no longer "
                             f"matches it); run `{prepare}` again")
    if refusal is not None:
        raise refusal


def check_clips_current(manifest: CacheManifest, clips: list[Clip], data_folder: Path, prepare: str) -> None:
    """Refuses a cache that does not describe `clips` (the data folder's now), naming up to `CHANGES_LISTED` that
    differ: new, gone (or no longer usable), re-captioned or with a video file of another size; a clip skipped at
    encoding counts once its video or caption changed (then it may be usable), not when it is removed. Videos of the
    same size with another modification time only are taken as unchanged, with a warning: copies that did not keep
    the times (cp -r, a sync, a container image) would otherwise all count as changed. A cache of a version that did
    not record each clip's frame rate is refused too: it read some rates wrong."""
    if any(clip.source_fps is None for clip in manifest.clips):
        raise InputError(f"the prepared data was made by an earlier version, which read videos of some frame rates "
                         f"(e.g. 24 fps at 12 fps) at the wrong rate; run `{prepare}` again (clips it read right "
                         "are reused)")
    encoded = {c.key: c.stamp for c in manifest.clips}
    skipped = {s.source: s.stamp for s in manifest.skipped if s.stamp is not None}
    try:
        found = {clip.key: clip.stamp() for clip in clips}
    except OSError as err:  # a video removed or made unreadable since the folder was listed
        raise InputError(f"cannot read {err.filename} in the data folder {data_folder} ({err.strerror})") from err
    changes, retimed = [], []
    for key in sorted(encoded.keys() | found.keys()):
        was, now = encoded.get(key, skipped.get(key)), found.get(key)
        if was is None or now is None:
            changes.append(f"{key} ({'new' if was is None else 'gone or no longer usable'})")
        elif was[2] != now[2]:
            changes.append(f"{key} (caption changed)")
        elif was[0] != now[0]:
            changes.append(f"{key} (video file changed)")
        elif was[1] != now[1]:
            retimed.append(key)
    if retimed:
        logger.warning("%d clip(s) of %s have other modification times than when prepared (%s), but the same sizes: "
                       "taken as unchanged; run `%s` again if their content changed", len(retimed), data_folder,
                       ", ".join(retimed[:CHANGES_LISTED]), prepare)
    if changes:
        more = f" and {len(changes) - CHANGES_LISTED} more" if len(changes) > CHANGES_LISTED else ""
        raise InputError(f"the prepared data does not match the data folder {data_folder}: "
                         f"{', '.join(changes[:CHANGES_LISTED])}{more}; run `{prepare}` again (unchanged clips are "
                         "reused)")


def check_fingerprint(found: dict[str, Any], expected: dict[str, Any], prepare: str) -> None:
    """Refuses a cache encoded for other settings, naming the first key that differs."""
    for key in sorted(set(found) | set(expected)):
        if found.get(key) != expected.get(key):
            raise ConfigError(
                f"the prepared data was encoded with {key}={found.get(key)!r} but the config asks for "
                f"{expected.get(key)!r}; run `{prepare}` again (or point 'data.cache_dir' at a new folder)"
            )
