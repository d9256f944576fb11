"""`--prepare`: encode every clip once (VAE latents, UMT5 caption embeddings) into the cache training reads.

Per clip: the leading frames are read at the configured frame rate (picked by timestamp from a faster video,
frame by frame from one within 10% of the rate), only as many as needed; a clip too short for `num_frames` at
that rate, slower than the rate or without a frame rate is skipped. The frames are
resized to cover the clip's size (the fixed `height` x `width`, or the bucket of the resolution's table nearest
the clip's aspect ratio, as i2v picks its size) and center-cropped. The VAE's posterior (mean and std, normalised
as the DiT sees latents) is stored so training draws a fresh latent sample every step, as sampling from the
posterior at inference does. The caption is encoded as generation encodes prompts.

A video that cannot be decoded, has no caption, too few frames or an unusable frame rate is skipped, listed in
the log and in `CACHE/skipped.txt`, never used. Clips already in the cache with the same source file (its size; a
new time alone, as a copy gives, is taken on), caption and settings are not encoded again, so adding clips to a
folder and preparing again only encodes the new ones (a clip of a cache made before frames were picked by timestamp
is kept where its frames are those `frame_indices` picks); the manifest is also saved every minute, so an
interrupted prepare resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from longcat_jax.errors import InputError
from longcat_jax.models.text_encoder.prompt import encode_prompt
from longcat_jax.training.cache import (
    CLIPS_DIR,
    SKIPPED_NAME,
    CachedClip,
    CacheManifest,
    clip_file_name,
    read_manifest,
    write_clip,
    write_manifest,
)
from longcat_jax.training.config import DataConfig, TrainConfig
from longcat_jax.training.dataset import Clip, SkippedClip, discover_clips
from longcat_jax.training.models import Encoders, check_model_path, load_encoders, model_id, model_sizes
from longcat_jax.training.shapes import clip_size
from longcat_jax.video_io import VIDEO_ERRORS, ffmpeg_error, open_video, resize_frames, to_model_input

logger = logging.getLogger(__name__)

MANIFEST_SAVE_SECONDS = 60.0
RATE_TOLERANCE = 0.1  # a video's frame rate this close to 'data.fps' is read frame by frame


@dataclasses.dataclass(frozen=True)
class PrepareReport:
    """What a prepare run did."""

    cache_dir: Path
    encoded: int
    reused: int
    skipped: tuple[SkippedClip, ...]


def cache_fingerprint(config: TrainConfig) -> dict[str, Any]:
    """Everything the cached encodings depend on (compared key by key before training)."""
    data = config.data
    sizes = model_sizes(config)
    return {
        "model": model_id(config),
        "dtype": config.dtype,
        "size": [data.height, data.width] if data.height else f"{data.resolution} buckets x{sizes.size_scale:g}",
        "num_frames": data.num_frames,
        "fps": data.fps,
        "text_length": sizes.text_length,
    }


def frame_indices(source_fps: float, fps: float | None, num_frames: int) -> list[int]:
    """Which frames of a `source_fps` video make its first `num_frames` frames at `fps` (None: every frame).

    Picked by timestamp, the frame nearest i * source_fps / fps (halves up) for frame i, so a 24 fps video gives 15 fps motion at
    15 fps (every n-th frame with n = round(24 / 15) = 2 would give 12 fps, played 1.25x too fast). Within
    `RATE_TOLERANCE` of `fps` the consecutive frames are taken (motion at most that much off, no frame dropped or
    repeated). A slower video is refused: its frames would repeat, teaching the LoRA a stutter (generation, by
    contrast, repeats the frames of a slow input video: `video_io.frames_at_fps`). Raises InputError for that and
    for a video that gives no frame rate.
    """
    if fps is None:
        return list(range(num_frames))
    if not (math.isfinite(source_fps) and source_fps > 0):
        raise InputError(f"the video gives no frame rate, so its frames cannot be picked at {fps:g} fps; re-encode "
                         "it with one (ffmpeg -r), or set 'data.fps' to null to take every frame")
    ratio = source_fps / fps
    if abs(source_fps - fps) <= RATE_TOLERANCE * fps * (1 + 1e-9):  # the band's edges in, whatever the float rounding
        return list(range(num_frames))
    if ratio < 1:
        raise InputError(f"{source_fps:g} fps, below the training rate {fps:g} fps ('data.fps'): its frames would "
                         f"repeat; give it at {fps * (1 - RATE_TOLERANCE):g} fps or more, or lower 'data.fps'")
    return [math.floor(i * ratio + 0.5) for i in range(num_frames)]


def _unreadable(err: Exception) -> InputError:
    """The skip reason of a file ffmpeg cannot read: ffmpeg's own words, without its banner (`ffmpeg_error`)."""
    return InputError(f"unreadable video ({ffmpeg_error(err) or type(err).__name__})")


def read_video_fps(path: Path) -> float:
    """The frame rate a video's header gives, 0 when it gives none (nothing is decoded). Raises InputError for a
    file ffmpeg cannot read."""
    reader = None
    try:
        reader, meta = open_video(path)
        return float(meta.get("fps") or 0.0)
    except VIDEO_ERRORS as err:
        raise _unreadable(err) from err
    finally:
        if reader is not None:
            reader.close()


def read_leading_frames(path: Path, num_frames: int, fps: float | None) -> tuple[np.ndarray, float]:
    """(the first `num_frames` frames of a video at `fps` as `frame_indices` picks them, uint8 [F, H, W, 3];
    the video's frame rate, 0 when it gives none).

    Streams the video and stops decoding at the last frame needed. Raises InputError for a file ffmpeg cannot
    decode, a frame rate `frame_indices` refuses, or a video too short.
    """
    reader = None
    frames: list[np.ndarray] = []
    decoded = 0
    try:
        reader, meta = open_video(path)
        width, height = meta["size"]
        source_fps = float(meta.get("fps") or 0.0)
        wanted = frame_indices(source_fps, fps, num_frames)
        for decoded, raw in enumerate(reader, start=1):
            if decoded - 1 == wanted[len(frames)]:
                frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
                if len(frames) == num_frames:
                    break
    except InputError:  # the frame rate refused, with its own reason
        raise
    except VIDEO_ERRORS as err:
        raise _unreadable(err) from err
    finally:
        if reader is not None:
            reader.close()
    if len(frames) < num_frames:
        span = wanted[-1] + 1
        needs = f"{span} for {num_frames} at {fps:g} fps from its {source_fps:g} fps" if span > num_frames else span
        raise InputError(f"too few frames: {decoded}, needs {needs} ('data.num_frames')")
    return np.stack(frames), source_fps


def cover_and_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [F, H, W, 3] -> [F, height, width, 3]: resized (Lanczos) to cover the size, then center-cropped."""
    h, w = frames.shape[1:3]
    scale = max(height / h, width / w)
    cover_h, cover_w = max(height, math.ceil(h * scale - 1e-6)), max(width, math.ceil(w * scale - 1e-6))
    resized = resize_frames(frames, cover_h, cover_w)
    top, left = (cover_h - height) // 2, (cover_w - width) // 2
    return resized[:, top : top + height, left : left + width]


def encode_video(vae, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames [F, H, W, 3] -> the posterior's normalised (mean, std), each [C, T, H/8, W/8] float32."""
    video = jnp.asarray(to_model_input(frames), vae.dtype)  # [1, 3, F, H, W]
    posterior = vae.encode(video)
    mean = vae.normalize(posterior.mean.astype(jnp.float32))
    latents_std = jnp.asarray(vae.config.latents_std, jnp.float32).reshape(1, -1, 1, 1, 1)
    std = posterior.std.astype(jnp.float32) / latents_std
    return np.asarray(mean[0]), np.asarray(std[0])


def encode_caption(encoders: Encoders, caption: str, text_length: int) -> np.ndarray:
    """The caption's UMT5 hidden states of its real tokens, [n, C_text] float32 (padding is restored at load)."""
    encoded = encode_prompt(encoders.text_encoder, encoders.tokenizer, caption, max_length=text_length,
                            dtype=jnp.float32)
    tokens = int(np.asarray(encoded.mask[0]).sum())
    return np.asarray(encoded.embeddings[0, 0, :tokens])


def _reusable(old: CacheManifest | None, fingerprint: dict, cache_dir: Path) -> dict[str, CachedClip]:
    if old is None or old.fingerprint != fingerprint:
        return {}
    return {c.key: c for c in old.clips if (cache_dir / CLIPS_DIR / c.file).is_file()}


def _encode_clip(config: TrainConfig, encoders: Encoders, clip: Clip, stamp: tuple[int, int, str]) -> CachedClip:
    source_bytes, source_mtime_ns, _ = stamp
    frames, source_fps = read_leading_frames(clip.video, config.data.num_frames, config.data.fps)
    sizes = model_sizes(config)
    height, width = clip_size(config, sizes, *frames.shape[1:3])
    mean, std = encode_video(encoders.vae, cover_and_crop(frames, height, width))
    text = encode_caption(encoders, clip.caption, sizes.text_length)
    name = clip_file_name(clip.key)
    write_clip(config.cache_dir, name, mean, std, text)
    return CachedClip(clip.key, name, clip.caption, tuple(mean.shape), int(text.shape[0]), source_bytes,
                      source_mtime_ns, source_fps)


def _same_source(old: tuple[int, int, str], new: tuple[int, int, str]) -> bool:
    """Whether a clip's (size, time, caption) stamp says it is the one encoded: the same size and caption; its time
    may differ (a copy that did not keep the times), as training takes it (`cache.check_clips_current`)."""
    return (old[0], old[2]) == (new[0], new[2])


def _picked_alike(old: CachedClip, clip: Clip, data: DataConfig) -> CachedClip | None:
    """A clip a version before `frame_indices` encoded, with its video's frame rate recorded, if that version (every
    n-th frame, n = round(source fps / fps)) picked the frames `frame_indices` picks; else None (encode again)."""
    try:
        source_fps = read_video_fps(clip.video)
        wanted = frame_indices(source_fps, data.fps, data.num_frames)
    except InputError:
        return None  # encoding it again skips it, with the reason
    stride = max(1, round(source_fps / data.fps)) if data.fps and source_fps > 0 else 1
    picked = list(range(0, stride * data.num_frames, stride))
    return dataclasses.replace(old, source_fps=source_fps) if picked == wanted else None


def prepare_dataset(config: TrainConfig, *, encoders: Encoders | None = None) -> PrepareReport:
    """Encodes the data folder's clips into `config.cache_dir`; returns what was encoded, reused and skipped.

    `encoders` replaces loading the checkpoint's (tests pass small ones). Raises InputError when the folder has
    no usable clip at all (before loading any model).
    """
    if jax.process_count() > 1:
        raise InputError("run --prepare in one process (without LONGCAT_COORDINATOR): every process would write the "
                         "same cache files; training then reads the cache from all hosts")
    clips, skipped = discover_clips(config.data.folder)
    if not clips:
        listed = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:5]) or "no video files"
        raise InputError(f"{config.data.folder} has no usable clip ({listed}); give videos (.mp4, ...) each with a "
                         f"caption file of the same name (.txt) or a metadata.jsonl")
    check_model_path(config)
    cache_dir = config.cache_dir
    fingerprint = cache_fingerprint(config)
    manifest = read_manifest(cache_dir)
    reusable = _reusable(manifest, fingerprint, cache_dir)
    # clips the last prepare with these settings skipped while encoding (too short, unreadable, too slow): unchanged,
    # they are skipped again without decoding them (or loading the encoders for them)
    skipped_before = {s.source: s for s in manifest.skipped if s.stamp is not None} if (
        manifest is not None and manifest.fingerprint == fingerprint) else {}
    done: list[CachedClip] = []
    todo: list[tuple[Clip, tuple[int, int, str]]] = []
    for clip in clips:
        stamp = clip.stamp()
        was_skipped = skipped_before.get(clip.key)
        if was_skipped is not None and _same_source(was_skipped.stamp, stamp):
            skipped.append(dataclasses.replace(was_skipped, stamp=stamp))
            continue
        old = reusable.get(clip.key)
        if old is not None and not _same_source(old.stamp, stamp):
            old = None
        if old is not None and old.source_fps is None:
            old = _picked_alike(old, clip, config.data)
        if old is not None:
            done.append(dataclasses.replace(old, source_mtime_ns=stamp[1]))  # a copy's new time, taken on
        else:
            todo.append((clip, stamp))
    reused = len(done)

    def save_manifest():
        write_manifest(cache_dir, CacheManifest(fingerprint, tuple(sorted(done, key=lambda c: c.key)), tuple(skipped)))

    if todo:
        encoders = encoders or load_encoders(config)
        last_save = time.monotonic()
        for clip, stamp in tqdm(todo, desc="Encoding clips", unit="clip"):
            try:
                done.append(_encode_clip(config, encoders, clip, stamp))
            except InputError as err:
                skipped.append(SkippedClip(clip.key, str(err), stamp))
            if time.monotonic() - last_save > MANIFEST_SAVE_SECONDS:  # an interrupted prepare keeps its work
                save_manifest()
                last_save = time.monotonic()
    save_manifest()
    report = PrepareReport(cache_dir, len(done) - reused, reused, tuple(skipped))
    logger.info("Prepared %d clips in %s (%d encoded now, %d already cached)", len(done), cache_dir,
                report.encoded, reused)
    if skipped:
        logger.warning("Skipped %d entries (not trained on; also in %s):\n%s", len(skipped),
                       cache_dir / SKIPPED_NAME, "\n".join(f"  {s.source}: {s.reason}" for s in skipped))
    return report
