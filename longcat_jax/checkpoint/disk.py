"""Running out of disk space while writing a checkpoint: recognised in any form and reported in one line.

Python raises OSError(ENOSPC); tensorstore (under Orbax) reports the same failure as text inside its own
error types, so both are recognised. The message names the folder being written and the space left.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from longcat_jax.errors import CheckpointError


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds `path`, or would hold it (its nearest existing parent)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(existing).free


def require_space(path: Path, needed: int, *, what: str, fix: str) -> None:
    """Refuses to start writing `needed` bytes to `path` when its disk has less free (running out halfway
    through an Orbax save leaves its background threads reporting the failure in many lines)."""
    free = free_bytes(path)
    if free < needed:
        raise CheckpointError(f"not enough free space for {what} in {path}: it needs about {needed / 2**20:.0f} MiB, "
                              f"{free / 2**20:.0f} MiB are free on that disk; {fix}")


def out_of_space(error: BaseException) -> bool:
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)


@contextlib.contextmanager
def writing(path: Path, *, fix: str) -> Iterator[None]:
    """Re-raises running out of space while writing `path` as a CheckpointError; `fix` says how to go on."""
    try:
        yield
    except Exception as e:
        if not out_of_space(e):
            raise
        raise CheckpointError(
            f"no space left on device while writing {path} ({free_bytes(path) / 2**30:.2f} GiB free on that disk); "
            f"{fix}"
        ) from e
