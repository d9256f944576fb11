"""Video comparison: PSNR and SSIM per frame and overall between two videos of the same size.

    python -m longcat_jax.compare A.mp4 B.mp4 [--json scores.json] [--allow-length-mismatch]

Measures what a quantization mode or a BSA preset costs on your own prompts: generate the same prompt and
seed twice (say bf16 dense and --quantize fp8) and compare. Frames are compared index by index as the
decoder returns them (uint8 RGB, see `longcat_jax.metrics` for the definitions). `.npz` files written by
`--output-format npz` are read too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from longcat_jax.errors import InputError
from longcat_jax.metrics import mse, psnr_from_mse, ssim
from longcat_jax.video_io import read_video

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FrameScore:
    index: int
    mse: float
    psnr: float
    ssim: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Per-frame scores and the overall ones: PSNR of the mean MSE over all frames, mean and lowest SSIM."""

    path_a: str
    path_b: str
    frames: list[FrameScore]
    frames_a: int
    frames_b: int
    size: tuple[int, int]  # (height, width)

    @property
    def psnr(self) -> float:
        return psnr_from_mse(float(np.mean([f.mse for f in self.frames])))

    @property
    def mean_psnr(self) -> float:
        """The mean of the per-frame PSNRs (inf if any frame is identical)."""
        return float(np.mean([f.psnr for f in self.frames]))

    @property
    def ssim(self) -> float:
        return float(np.mean([f.ssim for f in self.frames]))

    @property
    def worst_frame(self) -> FrameScore:
        """The frame of lowest SSIM."""
        return min(self.frames, key=lambda f: f.ssim)

    def to_json(self) -> dict:
        """A JSON-ready dict; an infinite PSNR (identical frames) is written as the string "inf"."""
        def number(value: float):
            return "inf" if math.isinf(value) else round(value, 6)

        return {
            "a": self.path_a, "b": self.path_b, "frames_a": self.frames_a, "frames_b": self.frames_b,
            "frames_compared": len(self.frames), "height": self.size[0], "width": self.size[1],
            "overall": {"psnr_db": number(self.psnr), "mean_psnr_db": number(self.mean_psnr), "ssim": number(self.ssim),
                        "min_ssim": number(self.worst_frame.ssim), "min_ssim_frame": self.worst_frame.index},
            "frames": [{"index": f.index, "mse": number(f.mse), "psnr_db": number(f.psnr), "ssim": number(f.ssim)}
                       for f in self.frames],
        }


def read_frames(path: str | Path) -> np.ndarray:
    """uint8 RGB frames [F, H, W, 3] of a video file (anything ffmpeg reads) or of an `.npz` with `frames`."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return read_video(path)[0]
    if not path.is_file():
        raise InputError(f"video {path} not found; check the path")
    with np.load(path) as data:
        if "frames" not in data:
            raise InputError(f"{path} holds no 'frames' array; give an .npz written by --output-format npz")
        frames = np.asarray(data["frames"])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise InputError(f"{path}: 'frames' must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def compare_frames(a: np.ndarray, b: np.ndarray, *, allow_length_mismatch: bool = False, path_a: str = "A",
                   path_b: str = "B") -> Comparison:
    """Scores frames a, b (uint8 [F, H, W, 3]) index by index.

    Frame sizes must match. Frame counts must match unless `allow_length_mismatch`, which compares the first
    min(F_a, F_b) frames and logs a warning.
    """
    if a.shape[1:] != b.shape[1:]:
        raise InputError(
            f"frame sizes differ: {path_a} is {a.shape[2]}x{a.shape[1]}, {path_b} is {b.shape[2]}x{b.shape[1]} "
            "(width x height); compare videos of one resolution (resize one first, e.g. ffmpeg -vf scale=W:H)"
        )
    if len(a) != len(b):
        if not allow_length_mismatch:
            raise InputError(
                f"frame counts differ: {path_a} has {len(a)}, {path_b} has {len(b)}; pass --allow-length-mismatch "
                "to compare the first frames of both"
            )
        logger.warning("frame counts differ (%d vs %d): comparing the first %d", len(a), len(b), min(len(a), len(b)))
    count = min(len(a), len(b))
    scores = []
    for index in tqdm(range(count), desc="comparing", unit="frame", leave=False, disable=count < 8):
        value = mse(a[index], b[index])
        scores.append(FrameScore(index, value, psnr_from_mse(value), ssim(a[index], b[index])))
    return Comparison(path_a, path_b, scores, len(a), len(b), (a.shape[1], a.shape[2]))


def compare_videos(path_a: str | Path, path_b: str | Path, *, allow_length_mismatch: bool = False) -> Comparison:
    """Reads both videos and scores them (see `compare_frames`)."""
    a, b = read_frames(path_a), read_frames(path_b)
    return compare_frames(a, b, allow_length_mismatch=allow_length_mismatch, path_a=str(path_a), path_b=str(path_b))


__all__ = ["Comparison", "FrameScore", "compare_frames", "compare_videos", "read_frames"]
