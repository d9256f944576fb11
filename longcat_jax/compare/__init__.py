"""Video comparison: PSNR and SSIM per frame and overall between two videos of the same size.

    python -m longcat_jax.compare A.mp4 B.mp4 [--json scores.json] [--allow-length-mismatch] [--allow-fps-mismatch]

Measures what a quantization mode or a BSA preset costs on your own prompts: generate the same prompt and
seed twice (say bf16 dense and --quantize fp8) and compare. Frames are compared index by index as the
decoder returns them (uint8 RGB, see `longcat_jax.metrics` for the definitions), so both videos must have
one frame rate: frame i of a 15 fps video and frame i of a 30 fps one are different moments. `.npz` files
written by `--output-format npz` (frames and fps) are read too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from longcat_jax.errors import InputError
from longcat_jax.metrics import SSIM_MIN_SIDE, mse, psnr_from_mse, ssim
from longcat_jax.video_io import read_video

logger = logging.getLogger(__name__)

# Rates closer than this (relative) are one rate: ffmpeg reports a rational rate rounded (30000/1001 as 29.97), and
# an NTSC rate is 0.1% from its whole number (29.97 / 30, 23.976 / 24): over 1,000 frames, one frame of drift.
FPS_REL_TOL = 2e-3


@dataclasses.dataclass(frozen=True)
class FrameScore:
    index: int
    mse: float
    psnr: float
    ssim: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Per-frame scores and the overall ones: PSNR of the mean MSE over all frames, mean and lowest SSIM.

    `fps_a`, `fps_b`: each video's frame rate, None where it is not known (frames given as arrays).
    """

    path_a: str
    path_b: str
    frames: list[FrameScore]
    frames_a: int
    frames_b: int
    size: tuple[int, int]  # (height, width)
    fps_a: float | None = None
    fps_b: float | None = None

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
            "fps_a": self.fps_a, "fps_b": self.fps_b,
            "frames_compared": len(self.frames), "height": self.size[0], "width": self.size[1],
            "overall": {"psnr_db": number(self.psnr), "mean_psnr_db": number(self.mean_psnr), "ssim": number(self.ssim),
                        "min_ssim": number(self.worst_frame.ssim), "min_ssim_frame": self.worst_frame.index},
            "frames": [{"index": f.index, "mse": number(f.mse), "psnr_db": number(f.psnr), "ssim": number(f.ssim)}
                       for f in self.frames],
        }


def read_clip(path: str | Path) -> tuple[np.ndarray, float]:
    """uint8 RGB frames [F, H, W, 3] and frames per second of a video file (anything ffmpeg reads) or of an
    `.npz` with `frames` and `fps` (what `--output-format npz` writes)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return read_video(path)
    if not path.is_file():
        raise InputError(f"video {path} not found; check the path")
    with np.load(path) as data:
        missing = [key for key in ("frames", "fps") if key not in data]
        if missing:
            raise InputError(f"{path} holds no {' or '.join(map(repr, missing))} array; give an .npz written by "
                             "--output-format npz (frames and fps)")
        frames, fps = np.asarray(data["frames"]), np.asarray(data["fps"])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise InputError(f"{path}: 'frames' must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if fps.shape != () or fps.dtype.kind not in "iuf" or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"{path}: 'fps' must be one positive number, got {fps.dtype} {fps.shape} {fps!r}")
    return frames, float(fps)


def compare_frames(a: np.ndarray, b: np.ndarray, *, fps_a: float | None = None, fps_b: float | None = None,
                   allow_length_mismatch: bool = False, allow_fps_mismatch: bool = False, path_a: str = "A",
                   path_b: str = "B") -> Comparison:
    """Scores frames a, b (uint8 [F, H, W, 3]) index by index; every check runs before any frame is scored.

    Frame sizes must match and be at least `SSIM_MIN_SIDE` pixels a side (one SSIM window). Frame rates, where
    both are given, must match (within `FPS_REL_TOL`) unless `allow_fps_mismatch`, which logs a warning. Frame
    counts must match unless `allow_length_mismatch`, which compares the first min(F_a, F_b) frames and logs a
    warning.
    """
    if a.shape[1:] != b.shape[1:]:
        raise InputError(
            f"frame sizes differ: {path_a} is {a.shape[2]}x{a.shape[1]}, {path_b} is {b.shape[2]}x{b.shape[1]} "
            "(width x height); compare videos of one resolution (resize one first, e.g. ffmpeg -vf scale=W:H)"
        )
    if min(a.shape[1:3]) < SSIM_MIN_SIDE:
        raise InputError(
            f"frames of {path_a} and {path_b} are {a.shape[2]}x{a.shape[1]} (width x height); SSIM needs at least "
            f"{SSIM_MIN_SIDE} pixels a side (one {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} window): compare videos "
            "generated at a larger size"
        )
    fps_a, fps_b = (fps if fps is not None and fps > 0 else None for fps in (fps_a, fps_b))  # 0: the file gives none
    if fps_a is not None and fps_b is not None and not math.isclose(fps_a, fps_b, rel_tol=FPS_REL_TOL):
        if not allow_fps_mismatch:
            raise InputError(
                f"frame rates differ: {path_a} is {fps_a:g} fps, {path_b} is {fps_b:g} fps, so frame i of one is not "
                f"the same moment as frame i of the other; resample one to the other's rate (an mp4: ffmpeg -i "
                f"IN.mp4 -vf fps={fps_a:g} OUT.mp4) or pass --allow-fps-mismatch to compare frame by frame anyway"
            )
        logger.warning("frame rates differ (%g vs %g fps): comparing frame by frame anyway", fps_a, fps_b)
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
    return Comparison(path_a, path_b, scores, len(a), len(b), (a.shape[1], a.shape[2]), fps_a, fps_b)


def compare_videos(path_a: str | Path, path_b: str | Path, *, allow_length_mismatch: bool = False,
                   allow_fps_mismatch: bool = False) -> Comparison:
    """Reads both videos with their frame rates and scores them (see `compare_frames`)."""
    (a, fps_a), (b, fps_b) = read_clip(path_a), read_clip(path_b)
    return compare_frames(a, b, fps_a=fps_a, fps_b=fps_b, allow_length_mismatch=allow_length_mismatch,
                          allow_fps_mismatch=allow_fps_mismatch, path_a=str(path_a), path_b=str(path_b))


__all__ = ["FPS_REL_TOL", "Comparison", "FrameScore", "compare_frames", "compare_videos", "read_clip"]
