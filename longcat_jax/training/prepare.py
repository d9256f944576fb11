"""`--prepare`: encode every clip once (VAE latents, UMT5 caption embeddings) into the cache training reads.

Per clip: the leading frames are read at the configured frame rate (every n-th frame of a faster video, n =
round(source fps / fps)), only as many as needed; a clip with fewer than `num_frames` is skipped. The frames are
resized to cover the clip's size (the fixed `height` x `width`, or the bucket of the resolution's table nearest
the clip's aspect ratio, as i2v picks its size) and center-cropped. The VAE's posterior (mean and std, normalised
as the DiT sees latents) is stored so training draws a fresh latent sample every step, as sampling from the
posterior at inference does. The caption is encoded as generation encodes prompts.

A video that cannot be decoded, has no caption or too few frames is skipped, listed in the log and in
`CACHE/skipped.txt`, never used. Clips already in the cache with the same source file (size and time), caption
and settings are not encoded again, so adding clips to a folder and preparing again only encodes the new ones;
the manifest is also saved every minute, so an interrupted prepare resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
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
from longcat_jax.training.config import TrainConfig
from longcat_jax.training.dataset import Clip, SkippedClip, discover_clips
from longcat_jax.training.models import Encoders, check_model_path, load_encoders, model_id, model_sizes
from longcat_jax.training.shapes import clip_size
from longcat_jax.video_io import resize_frames, to_model_input

logger = logging.getLogger(__name__)

MANIFEST_SAVE_SECONDS = 60.0


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


def read_leading_frames(path: Path, num_frames: int, fps: float | None) -> np.ndarray:
    """The first `num_frames` frames of a video at about `fps` (every n-th frame), uint8 [F, H, W, 3].

    Stops decoding once it has them. Raises InputError for a file ffmpeg cannot decode or a video too short.
    """
    import imageio_ffmpeg  # here, not at import: the rest of the package runs without ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    frames: list[np.ndarray] = []
    try:
        with warnings.catch_warnings():  # JAX warns about fork(); ffmpeg's child runs no JAX
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            meta = next(reader)
        width, height = meta["size"]
        source_fps = float(meta.get("fps") or 0.0)
        stride = max(1, round(source_fps / fps)) if fps and source_fps > 0 else 1
        for index, raw in enumerate(reader):
            if index % stride == 0:
                frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
                if len(frames) == num_frames:
                    break
    except (OSError, RuntimeError, StopIteration, ValueError, KeyError) as err:
        raise InputError(f"unreadable video ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
    finally:
        reader.close()
    if len(frames) < num_frames:
        at = f" at {fps:g} fps (1 frame in {stride} of its {source_fps:g} fps)" if stride > 1 else ""
        raise InputError(f"too few frames: {len(frames)}{at}, needs {num_frames} ('data.num_frames')")
    return np.stack(frames)


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


def _encode_clip(config: TrainConfig, encoders: Encoders, clip: Clip) -> CachedClip:
    stat = clip.video.stat()
    frames = read_leading_frames(clip.video, config.data.num_frames, config.data.fps)
    sizes = model_sizes(config)
    height, width = clip_size(config, sizes, *frames.shape[1:3])
    mean, std = encode_video(encoders.vae, cover_and_crop(frames, height, width))
    text = encode_caption(encoders, clip.caption, sizes.text_length)
    name = clip_file_name(clip.key)
    write_clip(config.cache_dir, name, mean, std, text)
    return CachedClip(clip.key, name, clip.caption, tuple(mean.shape), int(text.shape[0]), stat.st_size,
                      stat.st_mtime_ns)


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
    reusable = _reusable(read_manifest(cache_dir), fingerprint, cache_dir)
    done: list[CachedClip] = []
    todo: list[Clip] = []
    for clip in clips:
        old = reusable.get(clip.key)
        stat = clip.video.stat()
        if old is not None and (old.source_bytes, old.source_mtime_ns, old.caption) == (
            stat.st_size, stat.st_mtime_ns, clip.caption
        ):
            done.append(old)
        else:
            todo.append(clip)
    reused = len(done)

    def save_manifest():
        write_manifest(cache_dir, CacheManifest(fingerprint, tuple(sorted(done, key=lambda c: c.key)), tuple(skipped)))

    if todo:
        encoders = encoders or load_encoders(config)
        last_save = time.monotonic()
        for clip in tqdm(todo, desc="Encoding clips", unit="clip"):
            try:
                done.append(_encode_clip(config, encoders, clip))
            except InputError as err:
                skipped.append(SkippedClip(clip.key, str(err)))
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
