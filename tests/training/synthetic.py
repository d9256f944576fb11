"""Small inputs for the training tests: tiny videos on disk, a prepared cache written directly, small DiTs."""

from __future__ import annotations

import numpy as np

from kernels import BSAParams
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.presets import TINY_DIT_CONFIG
from longcat_jax.training.batches import Batch
from longcat_jax.training.cache import CachedClip, CacheManifest, clip_file_name, write_clip, write_manifest
from longcat_jax.training.config import TrainConfig, parse_train_config
from longcat_jax.training.prepare import cache_fingerprint
from longcat_jax.video_io import write_mp4

TEXT_CHANNELS = TINY_DIT_CONFIG.caption_channels  # the built-in text encoder's width, which the cache fingerprints


def moving_square_frames(num_frames: int, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    """uint8 [F, H, W, 3]: a coloured square moving over a gradient, so frames differ and compress well."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    color = rng.integers(0, 256, 3)
    frames = []
    for index in range(num_frames):
        frame = base.copy()
        top, left = (2 * index) % (height - 8), (3 * index) % (width - 8)
        frame[top : top + 8, left : left + 8] = color
        frames.append(frame.astype(np.uint8))
    return np.stack(frames)


def write_clip_video(folder, name: str, num_frames: int, caption: str | None, *, fps: float = 15.0, seed: int = 0):
    """Writes `name`.mp4 (and `name`.txt with the caption unless it is None) into `folder`."""
    write_mp4(folder / f"{name}.mp4", moving_square_frames(num_frames, seed=seed), fps=fps)
    if caption is not None:
        (folder / f"{name}.txt").write_text(caption)


def small_dit_config(*, hidden: int = 32, heads: int = 2, depth: int = 1, bsa: BSAParams | None = None) -> DiTConfig:
    """A DiT small enough to compile a training step in seconds, reading the built-in model's text width."""
    return DiTConfig(hidden_size=hidden, depth=depth, num_heads=heads, caption_channels=TEXT_CHANNELS,
                     adaln_tembed_dim=16, frequency_embedding_size=32, enable_bsa=bsa is not None, bsa_params=bsa,
                     text_tokens_zero_pad=True)


def small_dit(seed: int = 0, **config):
    return random_dit(small_dit_config(**config), seed=seed)


def train_config(tmp_path, **sections) -> TrainConfig:
    """A config on the built-in model (float32) with `tmp_path` folders; `sections` override whole sections."""
    raw = {
        "model_path": None,
        "dtype": "float32",
        "output_dir": str(tmp_path / "out"),
        "data": {"folder": str(tmp_path / "clips"), "cache_dir": str(tmp_path / "cache"), "num_frames": 5},
        "lora": {"rank": 4, "alpha": 4, "targets": ["all"]},
        "training": {"steps": 4, "seed": 3, "log_every": 1},
        "checkpoint": {"every": 2, "keep": 5},
        **sections,
    }
    return parse_train_config(raw, source="test config")


def write_cache(config: TrainConfig, clips: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> CacheManifest:
    """A prepared cache of the given clips (key -> (latent_mean, latent_std, text)) with the config's fingerprint,
    as `--prepare` would leave it, and the data folder it describes (a stand-in file per video, the caption
    `caption of <key>` beside it)."""
    cached = []
    for key, (mean, std, text) in clips.items():
        video = config.data.folder / key
        video.parent.mkdir(parents=True, exist_ok=True)
        video.write_bytes(b"not decoded by training")
        video.with_suffix(".txt").write_text(f"caption of {key}")
        stat = video.stat()
        name = clip_file_name(key)
        write_clip(config.cache_dir, name, mean, std, text)
        cached.append(CachedClip(key, name, f"caption of {key}", tuple(mean.shape), text.shape[0], stat.st_size,
                                 stat.st_mtime_ns, 15.0))
    manifest = CacheManifest(cache_fingerprint(config), tuple(cached), ())
    write_manifest(config.cache_dir, manifest)
    return manifest


def smooth_clip(seed: int, latent_shape=(16, 2, 8, 8), tokens: int = 6):
    """(latent_mean, latent_std, text) of a synthetic clip: low-frequency latents, small std, random text."""
    rng = np.random.default_rng(seed)
    channels, frames, height, width = latent_shape
    y, x = np.meshgrid(np.linspace(0, np.pi, height), np.linspace(0, np.pi, width), indexing="ij")
    phases = rng.uniform(0, 2 * np.pi, (channels, frames, 1, 1))
    mean = np.sin(y[None, None] + phases) * np.cos(x[None, None] - phases)
    std = np.full(latent_shape, 0.05, np.float32)
    text = rng.standard_normal((tokens, TEXT_CHANNELS)).astype(np.float32)
    return mean.astype(np.float32), std, text


def batch_of(clips, text_length: int = 64) -> Batch:
    """One micro-batch ([1, B, ...]) of (latent_mean, latent_std, text) clips, text zero-padded as training pads it."""
    text = np.zeros((len(clips), 1, text_length, TEXT_CHANNELS), np.float32)
    mask = np.zeros((len(clips), text_length), np.int32)
    for index, (_, _, tokens) in enumerate(clips):
        text[index, 0, : len(tokens)] = tokens
        mask[index, : len(tokens)] = 1
    return Batch(np.stack([c[0] for c in clips])[None], np.stack([c[1] for c in clips])[None], text[None], mask[None])
