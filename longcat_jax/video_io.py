"""Video and image files in and out of LongCat-Video, with the original pipeline's pre- and post-processing.

Out: frames are uint8 [F, H, W, 3]; `to_uint8_frames` turns the VAE's [-1, 1] output into them as the original does
(`(x / 2 + 0.5)` clipped, times 255, truncated), refusing NaN (`nan_guard`), which would turn black. Writers
(`write_mp4` H.264, `write_npz`, `write_frames` PNG folder) write into a hidden temporary name in the target's folder
and `os.replace` it into place, so a failure, Ctrl-C or SIGTERM never leaves a half-written file at the target nor a
temporary one beside it (an existing output there stays untouched). ffmpeg's exit status is checked, and a write
that fails (a full disk, a folder that is not writable) ends in one `OutputError` line that says what and where.
`longcat_jax.output_path` checks the same before a run.

In: `read_image` / `read_video` give uint8 frames (a 16-bit image scaled to 8 bits, an animation refused as an
image; a video that decodes to fewer frames than its container says is read with a warning, one that ffmpeg cannot
read refused with ffmpeg's last lines); `resize_frames` resizes them with PIL (Lanczos is what the
original's diffusers preprocessing uses for i2v and continuation inputs, bicubic what its demos use to resize
outputs back); `to_model_input` maps uint8 frames to the VAE's [-1, 1] float32 [B, 3, F, H, W] layout.
`upsample_for_refine` is the refinement stage's input: linear (align_corners) resize in space and time.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import PIL.ImageOps

from longcat_jax.errors import InputError, LongCatError
from longcat_jax.nan_guard import check_finite
from longcat_jax.output_path import is_frames_folder, nearest_existing

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("mp4", "npz", "frames")
# The container's duration may count other streams (audio) and round: fewer decoded frames than it implies are
# reported only past this many (or 5 %).
TRUNCATION_TOLERANCE_FRAMES = 2
MAX_FPS = 240.0  # an mp4 written at 1000 fps or more reads back at 0 fps; ffmpeg fails outright near 1e12
FFMPEG_ERROR_LINES = 4  # of ffmpeg's output, in an unreadable video's error: its last lines say what went wrong
VIDEO_ERRORS = (OSError, RuntimeError, StopIteration, ValueError, KeyError)  # what ffmpeg's reader raises on a bad file
FFMPEG_CONTEXT = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\] ")  # "[in#0 @ 0x5607b2ce2040] ": which ffmpeg part says it
RESIZE_METHODS = {
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "bilinear": PIL.Image.Resampling.BILINEAR,
}


# ----------------------------------------------------------------------------------------------- model <-> frames


def to_uint8_frames(video: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """VAE output in [-1, 1], [3, F, H, W] or [1, 3, F, H, W] -> uint8 [F, H, W, 3], as the original's demos.

    A jax array stays on its device (a quarter of the bytes to copy to the host afterwards); numpy stays numpy.
    """
    xp = jnp if isinstance(video, jax.Array) else np
    video = xp.asarray(video, dtype=xp.float32)
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise InputError(f"expected one video, got a batch of {video.shape[0]}; write each batch item separately")
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise InputError(f"expected a video [3, F, H, W] or [1, 3, F, H, W], got shape {video.shape}")
    check_finite(video, "VAE decode")  # NaN would become black pixels below
    unit = xp.clip(video / 2 + 0.5, 0.0, 1.0)  # [3, F, H, W]
    return (unit.transpose(1, 2, 3, 0) * 255).astype(xp.uint8)  # [F, H, W, 3]


def to_model_input(frames: np.ndarray) -> np.ndarray:
    """uint8 frames [F, H, W, 3] -> float32 [1, 3, F, H, W] in [-1, 1] (the VAE encoder's input layout)."""
    frames = _check_frames(frames)
    unit = frames.astype(np.float32) / np.float32(255.0)
    return (2.0 * unit - 1.0).transpose(3, 0, 1, 2)[None]


def resize_frames(frames: np.ndarray, height: int, width: int, method: str = "lanczos") -> np.ndarray:
    """uint8 frames [F, H, W, 3] -> [F, height, width, 3] with PIL (aspect ratio not kept, as the original)."""
    frames = _check_frames(frames)
    if method not in RESIZE_METHODS:
        raise InputError(f"unknown resize method {method!r}; use one of {sorted(RESIZE_METHODS)}")
    if frames.shape[1:3] == (height, width):
        return frames
    resample = RESIZE_METHODS[method]
    return np.stack(
        [np.asarray(PIL.Image.fromarray(f).resize((width, height), resample=resample)) for f in frames]
    )


def frames_at_fps(frames: np.ndarray, fps: float, target_fps: float) -> np.ndarray:
    """`frames` (at `fps`) taken at about `target_fps`: every n-th frame, n = max(1, round(fps / target_fps)), as the
    continuation demo prepares its input; where that n is 1 but the video is slower (fps at most 2/3 of the
    target), each frame repeated round(target_fps / fps) times instead. The demo takes such a video as it is, so
    that it plays faster: a 15 fps video (LongCat's own output) as the 30 fps refinement's condition frames played
    at double speed at the head of the refined video. A rate that is not a positive number (a container that gives
    none reads as 0) takes the frames as they are."""
    if not (math.isfinite(fps) and fps > 0):
        return frames
    repeat = round(target_fps / fps)
    if repeat >= 2:
        return np.repeat(frames, repeat, axis=0)
    return frames[:: max(1, round(fps / target_fps))]


@functools.partial(jax.jit, static_argnames=("axis", "size"))
def resize_align_corners(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Linear resize of one axis with align_corners=True (end samples map onto end samples), in float32."""
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[axis]
    if n == size:
        return x
    scale = (n - 1) / (size - 1) if size > 1 else 0.0
    position = jnp.arange(size, dtype=jnp.float32) * scale  # [size]
    low = jnp.clip(jnp.floor(position).astype(jnp.int32), 0, n - 1)
    high = jnp.minimum(low + 1, n - 1)
    frac = (position - low.astype(jnp.float32)).reshape([size if a == axis else 1 for a in range(x.ndim)])
    return jnp.take(x, low, axis=axis) * (1 - frac) + jnp.take(x, high, axis=axis) * frac


def upsample_for_refine(frames: np.ndarray, num_frames: int, height: int, width: int) -> jax.Array:
    """Refinement input: uint8 stage-1 frames [F, h, w, 3] -> float32 [1, 3, num_frames, height, width] in [-1, 1].

    As the original: bilinear (align_corners) to the 720p bucket, then linear in time to `num_frames` (2F unless
    spatial-only refinement), then mapped to [-1, 1].
    """
    return _upsample_unit_frames(_check_frames(frames), num_frames, height, width)


@functools.partial(jax.jit, static_argnames=("num_frames", "height", "width"))
def _upsample_unit_frames(frames: jax.Array, num_frames: int, height: int, width: int) -> jax.Array:
    video = frames.astype(jnp.float32).transpose(3, 0, 1, 2)[None] / 255.0  # [1, 3, F, h, w]
    video = resize_align_corners(video, axis=3, size=height)
    video = resize_align_corners(video, axis=4, size=width)
    video = resize_align_corners(video, axis=2, size=num_frames)
    return video * 2 - 1


# ------------------------------------------------------------------------------------------------------- reading


def read_image(path: str | Path) -> np.ndarray:
    """An image file (PNG, JPEG, ...) as uint8 RGB [H, W, 3], EXIF rotation applied and alpha dropped.

    A 16-bit image is scaled to 8 bits by its range, not clipped (PIL's RGB conversion clips 16-bit gray at 255: a
    nearly white image). An animation (GIF, APNG, WebP) and an image whose brightness range is undefined (32-bit
    integer or float pixels) are refused by name: reading either as a still image would give a wrong one.
    """
    path = _existing(path, "image")
    try:
        with PIL.Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1 and image.format != "MPO":  # a camera's MPO JPEG: its first image is the photo
                raise InputError(f"--image {path} holds {frames} frames (an animation); give a still image (PNG or "
                                 f"JPEG), or use it as a video: --task continuation --video {path}")
            # 16-bit gray: "I;16", or "I" (32-bit) from a PNG, which cannot hold more than 16 (older Pillows)
            sixteen_bit = image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG")
            if image.mode in ("I", "F") and not sixteen_bit:
                raise InputError(f"image {path} has {image.mode} pixels (32-bit integer or float), whose brightness "
                                 "range is not defined; save it as an 8- or 16-bit PNG")
            image = PIL.ImageOps.exif_transpose(image)
            if sixteen_bit:
                gray = np.rint(np.asarray(image).astype(np.float32) * np.float32(255 / 65535)).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except InputError:
        raise
    except Exception as err:  # PIL raises many types for unreadable files
        raise InputError(f"cannot read image {path}: {err}; give a PNG or JPEG file") from err


def open_video(path: Path):
    """(ffmpeg's frame generator of `path`, raw RGB24 frames; its metadata: size, fps, duration, ...), ffmpeg started.
    The caller closes the generator; a file ffmpeg cannot read raises what `VIDEO_ERRORS` lists."""
    import imageio_ffmpeg  # here, not at import: the rest of the package runs without ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        with _ffmpeg_subprocess():
            return reader, next(reader)
    except BaseException:
        reader.close()
        raise


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """A video file as (uint8 RGB frames [F, H, W, 3], frames per second)."""
    path = _existing(path, "video")
    reader = None
    try:
        reader, meta = open_video(path)
        width, height = meta["size"]
        frames = [np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3) for raw in reader]
    except VIDEO_ERRORS as err:
        raise InputError(f"cannot read video {path}: {ffmpeg_error(err)}; give an mp4 (or another format ffmpeg "
                         "reads)") from err
    finally:
        if reader is not None:
            reader.close()
    if not frames:
        raise InputError(f"video {path} has no frames")
    _warn_if_truncated(path, len(frames), meta)
    return np.stack(frames), float(meta["fps"])


def ffmpeg_error(err: Exception) -> str:
    """imageio-ffmpeg's error in one line: its own message and the last `FFMPEG_ERROR_LINES` lines of ffmpeg's
    output after its banner (version, build configuration, library versions: some 40 lines that say nothing of
    the file), each without its `FFMPEG_CONTEXT` prefix."""
    message, _, output = str(err).partition("=== stderr ===")
    lines, in_banner = [], False
    for line in output.splitlines():
        in_banner = line.startswith("ffmpeg version") or (in_banner and line[:1].isspace())
        if line.strip() and not in_banner:
            lines.append(FFMPEG_CONTEXT.sub("", line.strip()))
    return "; ".join(part for part in [message.strip(), *lines[-FFMPEG_ERROR_LINES:]] if part)


def _warn_if_truncated(path: Path, decoded: int, meta: dict) -> None:
    """Warns when a video decodes to fewer frames than its container's duration and frame rate imply: a truncated
    file (an interrupted download or copy) whose tail is missing. A warning, not a refusal: the container's
    duration counts every stream, so a video whose audio outlasts it would be refused wrongly."""
    duration, fps = meta.get("duration"), meta.get("fps")
    if not duration or not fps or not math.isfinite(duration * fps):
        return
    expected = round(duration * fps)
    if expected - decoded > max(TRUNCATION_TOLERANCE_FRAMES, 0.05 * expected):
        logger.warning(
            "video %s decodes to %d frames, but its container says %g s at %g fps (%d frames): the file may be "
            "truncated (an interrupted download or copy); using the %d frames it has", path, decoded, duration, fps,
            expected, decoded,
        )


# ------------------------------------------------------------------------------------------------------- writing


class OutputError(LongCatError):
    """The output could not be written (no space left, no permission, ffmpeg failed); nothing is left at its path."""


def save_video(path: str | Path, frames: np.ndarray, fps: float, output_format: str = "mp4", crf: int = 18) -> Path:
    """Writes frames [F, H, W, 3] uint8 as `output_format` (mp4, npz or frames) at `path`, atomically."""
    if output_format == "mp4":
        return write_mp4(path, frames, fps, crf=crf)
    if output_format == "npz":
        return write_npz(path, frames, fps)
    if output_format == "frames":
        return write_frames(path, frames)
    raise InputError(f"unknown output format {output_format!r}; use one of {list(OUTPUT_FORMATS)}")


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, *, crf: int = 18) -> Path:
    """H.264 (yuv420p) mp4 of uint8 frames [H, W, 3], given as an array [F, H, W, 3] or any iterable of frames.

    Odd sizes are padded by one repeated edge row/column (yuv420p needs even sides). `crf` 18 is the original's
    default quality (10 for its refinement outputs).
    """
    _check_fps(fps)
    path = Path(path)
    with _reported_write_errors(path), atomic_file(path) as temp:
        encoder = None
        shape = None
        try:
            for frame in frames:
                frame = _check_frame(frame, shape)
                if encoder is None:
                    shape = frame.shape
                    if shape[0] % 2 or shape[1] % 2:
                        logger.warning("frame size %dx%d is odd; padding to even for H.264", shape[0], shape[1])
                    encoder = H264Encoder(temp, _pad_even(frame).shape, fps, crf)
                encoder.write(_pad_even(frame))
            if encoder is None:
                raise InputError(f"no frames to write to {path}")
            encoder.finish()
        finally:
            if encoder is not None:
                encoder.stop()
    return path


def write_npz(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """An .npz with `frames` (uint8 [F, H, W, 3]) and `fps`."""
    frames = _check_frames(frames)
    path = Path(path)
    with _reported_write_errors(path), atomic_file(path) as temp:
        with open(temp, "wb") as handle:
            np.savez_compressed(handle, frames=frames, fps=np.float64(fps))
    return path


def write_frames(path: str | Path, frames: np.ndarray) -> Path:
    """A folder of PNGs `frame_00000.png`, ...; an earlier frames folder at `path` is replaced only once all are
    written. A folder holding anything else is refused rather than replaced (its files would be lost)."""
    frames = _check_frames(frames)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is not a folder; choose another --output-path for --output-format frames")
    if path.is_dir() and not is_frames_folder(path):
        raise InputError(f"{path} holds files other than frame_*.png, and --output-format frames replaces the folder "
                         "whole; choose a new or empty folder as --output-path")
    with _reported_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
        try:
            digits = max(5, len(str(len(frames) - 1)))
            for index, frame in enumerate(frames):
                iio.imwrite(temp / f"frame_{index:0{digits}d}.png", frame)
            os.chmod(temp, 0o777 & ~_umask())  # mkdtemp makes the folder private; outputs get the usual permissions
            _replace_folder(temp, path)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    return path


class H264Encoder:
    """ffmpeg (the binary imageio-ffmpeg ships) encoding raw RGB frames from its stdin into an H.264 mp4 at `path`.

    Its exit status and error output are checked: a full disk shows only there (ffmpeg fails writing the mp4's
    index at the end, and a writer that does not check would put a broken file in place). It runs in its own
    session, so a Ctrl-C at the terminal reaches only this process, whose cleanup stops it (`stop`).
    """

    def __init__(self, path: Path, frame_shape: tuple[int, ...], fps: float, crf: int):
        self._errors = tempfile.TemporaryFile()  # a file, not a pipe: ffmpeg can never block on a full pipe
        command = h264_command(path, frame_shape[1], frame_shape[0], fps, crf)
        with _ffmpeg_subprocess():
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                             stderr=self._errors, start_new_session=True)

    def write(self, frame: np.ndarray) -> None:
        """Sends one frame [H, W, 3] uint8."""
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:  # ffmpeg has exited: its error output says why
            self._process.wait()
            self._raise_failure()

    def finish(self) -> None:
        """Ends the stream and waits for ffmpeg; raises `OSError` (errno ENOSPC for a full disk) if it failed."""
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        if self._process.wait() != 0:
            self._raise_failure()

    def stop(self) -> None:
        """Kills ffmpeg if it still runs (after a failure or an interrupt) and releases its files."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        with contextlib.suppress(OSError):
            self._process.stdin.close()
        self._errors.close()

    def _raise_failure(self) -> None:
        self._errors.seek(0)
        lines = self._errors.read().decode(errors="replace").strip().splitlines()
        detail = "; ".join(lines[-3:]) or "no error output"
        no_space = any("no space left on device" in line.lower() for line in lines)
        message = f"ffmpeg exited with status {self._process.returncode}: {detail}"
        raise OSError(errno.ENOSPC, message) if no_space else OSError(message)


def h264_command(path: Path, width: int, height: int, fps: float, crf: int) -> list[str]:
    """The ffmpeg command line of `H264Encoder`: raw RGB frames of width x height on stdin, H.264 yuv420p out."""
    import imageio_ffmpeg  # here, not at import: the rest of the package runs without ffmpeg

    return [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{width}x{height}", "-r", repr(float(fps)), "-i", "-", "-an", "-vcodec", "libx264",
            "-pix_fmt", "yuv420p", "-crf", str(crf), str(path)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yields a temporary path next to `path` (same suffix, so tools infer the format) and moves it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".partial{path.suffix}")
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes the file private; outputs get the usual permissions
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _replace_folder(new: Path, path: Path) -> None:
    """Moves the folder `new` to `path`; an earlier folder there is removed only once the new one is in place, and
    put back if the move fails or is interrupted."""
    if not path.exists():
        os.replace(new, path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    os.replace(path, old / path.name)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old / path.name, path)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _reported_write_errors(path: Path) -> Iterator[None]:
    """Turns an `OSError` while writing `path` into one `OutputError` line that says what happened and where."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OutputError(f"no space left on device writing {path} (the file system of "
                              f"{nearest_existing(path.parent).resolve()}); nothing was written; free space there or "
                              "choose another --output-path") from err
        raise OutputError(f"cannot write {path}: {err}; nothing was written; choose another --output-path") from err


@contextlib.contextmanager
def _ffmpeg_subprocess() -> Iterator[None]:
    """Silences JAX's os.fork() warning while ffmpeg starts: the child execs ffmpeg at once and runs no JAX."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        yield


def _check_fps(fps: float) -> None:
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise InputError(f"fps must be a number in (0, {MAX_FPS:g}], got {fps}")


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} not found; check the path")
    return path


def _check_frame(frame: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}; see to_uint8_frames")
    if shape is not None and frame.shape != shape:
        raise InputError(f"all frames must have one size; got {frame.shape} after {shape}")
    return frame


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] == 0:
        raise InputError(f"frames must be uint8 [F, H, W, 3] with F > 0, got {frames.dtype} {frames.shape}")
    return frames


def _pad_even(frame: np.ndarray) -> np.ndarray:
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if not (pad_h or pad_w):
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
