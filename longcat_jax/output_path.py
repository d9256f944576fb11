"""Where a run writes, checked before the run (`longcat_jax.pipelines.tasks.plan_run` calls these before any model
loads, so a typo in `--output-path` costs seconds, not a generation): the path names a file of the output format
(or a frames folder that may be replaced), its folder is writable, and the free space there holds the video.

`output_bytes` is an upper bound of what `video_io.save_video` writes; `video_io`'s writers use `nearest_existing`
and `is_frames_folder` too, so the checks and the writes agree.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from pathlib import Path

from longcat_jax.errors import InputError

logger = logging.getLogger(__name__)

FILE_SUFFIXES = {"mp4": ".mp4", "npz": ".npz"}  # the file formats' suffixes (frames: a folder)
# suffixes of media files: a frames folder named so is a mistaken --output-format or --output-path
MEDIA_FILE_SUFFIXES = (*FILE_SUFFIXES.values(), ".mov", ".mkv", ".avi", ".webm", ".gif", ".png", ".jpg", ".jpeg")
FRAME_FILE = re.compile(r"frame_\d+\.png")
# H.264 at crf 18 (yuv420p), worst case: uniform random noise, which does not compress, measured 0.70 bytes per
# pixel at 208x128 and at 832x480. The free-space check sizes an mp4 by it, so it never underestimates.
H264_BYTES_PER_PIXEL = 0.75
FILE_OVERHEAD_BYTES = 16 * 1024  # headers, zip directory, deflate block framing, PNG's filter byte per row


def output_bytes(output_format: str, num_frames: int, height: int, width: int) -> int:
    """An upper bound of the bytes `save_video` writes for `num_frames` frames of height x width: the mp4 at
    `H264_BYTES_PER_PIXEL` (incompressible noise), npz and PNG frames at their raw size (what deflate cannot
    shrink it stays near), plus headers per file."""
    pixels = num_frames * height * width
    if output_format == "mp4":
        return math.ceil(pixels * H264_BYTES_PER_PIXEL) + FILE_OVERHEAD_BYTES
    files = num_frames if output_format == "frames" else 1
    return 3 * pixels + files * FILE_OVERHEAD_BYTES


def check_output_path(path: str | Path, output_format: str) -> Path:
    """Checks where a run will write, before the run: a name (not empty, not a folder for a file format, the
    format's suffix) in a writable folder (missing folders below it are created when writing). Returns the path to
    write: a file name without a suffix gets the format's (`.mp4`, `.npz`)."""
    path = Path(path)
    if path.name in ("", "..") or str(path) == ".":
        raise InputError(f"the output path {str(path)!r} names no file (an empty --output-path?); give one, e.g. "
                         f"outputs/clip{FILE_SUFFIXES.get(output_format, '')}")
    suffix = FILE_SUFFIXES.get(output_format)
    if suffix is not None:
        if path.is_dir():
            raise InputError(f"the output path {path} is a folder; give a file name in it, e.g. {path / ('clip' + suffix)}")
        if not path.suffix:
            path = path.with_name(path.name + suffix)
            logger.info("the output path has no suffix: writing %s (--output-format %s)", path, output_format)
        elif path.suffix.lower() != suffix:
            raise InputError(f"the output path {path} ends in {path.suffix}, but --output-format {output_format} "
                             f"writes {suffix}; name it {path.with_name(path.name + suffix)} or pick the format "
                             "that fits (--output-format mp4, npz or frames)")
        if path.is_dir():
            raise InputError(f"the output path {path} is a folder; give another file name")
    elif path.suffix.lower() in MEDIA_FILE_SUFFIXES:
        raise InputError(f"--output-format frames writes a folder of frame_*.png, but the output path {path} ends in "
                         f"{path.suffix}, a file's name; name a folder (e.g. {path.with_suffix('')}) or pick the format "
                         "that fits (--output-format mp4 or npz)")
    elif path.exists() and not (path.is_dir() and is_frames_folder(path)):
        what = "holds files other than frame_*.png" if path.is_dir() else "is a file"
        raise InputError(f"the output path {path} {what}, and --output-format frames writes a folder of frame_*.png "
                         "that replaces it whole; choose a new or empty folder")
    check_writable_folder(path, "--output-path")
    return path


def check_writable_folder(path: Path, flag: str) -> None:
    """Refuses a `path` (given as `flag`) whose folder cannot take a new file: the nearest existing folder above it
    (missing ones are created when writing) is a file, or no file can be made in it."""
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: {folder} is a file, not a folder; choose another {flag}")
    try:  # a file made and removed at once: permissions alone miss read-only and special file systems (/proc)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f"cannot write {path}: the folder {folder} is not writable (read-only, not yours, or a "
                         f"special file system such as /proc: {err.strerror}); choose another {flag}") from err


def check_output_space(path: Path, output_format: str, num_frames: int, height: int, width: int) -> None:
    """Refuses a video whose `output_bytes` exceed the free space where `path` goes."""
    folder = nearest_existing(path.parent)
    needed, free = output_bytes(output_format, num_frames, height, width), shutil.disk_usage(folder).free
    if needed > free:
        raise InputError(f"{path} will need up to {human_bytes(needed)} ({num_frames} frames of {height}x{width}) "
                         f"and {folder.resolve()} has {human_bytes(free)} free; free space there or choose another "
                         "--output-path")


def human_bytes(count: float) -> str:
    """`count` bytes in B, KB, MB, GB or TB (powers of 1000), one decimal."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:,.1f} TB"


def is_frames_folder(path: Path) -> bool:
    """Whether the folder `path` holds nothing but `frame_*.png` files (an earlier frames output, or nothing)."""
    return all(entry.is_file() and FRAME_FILE.fullmatch(entry.name) for entry in path.iterdir())


def nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists (where missing folders would be created)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
