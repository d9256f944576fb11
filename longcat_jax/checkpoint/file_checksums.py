"""Size and CRC32 of every file in a folder, recorded when a chunk of our format is written and verified
before it is read, so a flipped byte in an Orbax/OCDBT file is refused with the file named instead of
changing the weights silently.

CRC32 (zlib) detects accidental damage (bad disks, broken copies, truncation); it is no defence against
someone who can also rewrite the index. zlib's CRC32 ran at 1.7 GB/s on one core of the 2-core development
VM; the file just hashed is read again by Orbax from the page cache.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from pathlib import Path

from longcat_jax.errors import CheckpointError

FileRecord = dict[str, int]  # {"size": bytes, "crc32": value}
_BLOCK = 16 << 20


def list_files(folder: Path) -> list[str]:
    """Every file under `folder` as a relative POSIX path, sorted (symlinked folders are not entered)."""
    found = []
    for here, _, files in os.walk(folder):
        relative = Path(here).relative_to(folder)
        found += [(relative / name).as_posix() for name in files]
    return sorted(found)


def crc32_of(path: Path) -> int:
    """CRC32 of a file's bytes, read in 16 MiB blocks into one reused buffer."""
    buffer = bytearray(_BLOCK)
    view, crc = memoryview(buffer), 0
    with path.open("rb", buffering=0) as f:
        while got := f.readinto(buffer):
            crc = zlib.crc32(view[:got], crc)
    return crc


def folder_checksums(folder: Path) -> dict[str, FileRecord]:
    """{relative path: {"size", "crc32"}} for every file under `folder`."""
    return {name: {"size": (folder / name).stat().st_size, "crc32": crc32_of(folder / name)}
            for name in list_files(folder)}


def verify_folder(folder: Path, recorded: Mapping[str, FileRecord], *, shown_from: Path, what: str) -> None:
    """Refuses `folder` unless it holds exactly the `recorded` files with their sizes and checksums.

    Errors name the file relative to `shown_from` (the part's folder) and `what` (e.g. "chunk 00003").
    """
    def shown(name: str) -> str:
        return (folder / name).relative_to(shown_from).as_posix()

    present = set(list_files(folder))
    for name in sorted(recorded):
        if name not in present:
            raise CheckpointError(f"{shown_from}: {what}: file {shown(name)} is missing; the copy is incomplete, "
                                  "convert again")
    for name in sorted(present - set(recorded)):
        raise CheckpointError(f"{shown_from}: {what}: file {shown(name)} is not part of the converted checkpoint "
                              "(it was added after conversion); remove it or convert again")
    for name, record in sorted(recorded.items()):
        size = (folder / name).stat().st_size
        if size != record["size"]:
            raise CheckpointError(f"{shown_from}: {what}: file {shown(name)} has {size} bytes, it was written with "
                                  f"{record['size']} (truncated or damaged, checksum not checked); convert again")
        crc = crc32_of(folder / name)
        if crc != record["crc32"]:
            raise CheckpointError(f"{shown_from}: {what}: file {shown(name)} fails its checksum (crc32 {crc:08x}, "
                                  f"written as {record['crc32']:08x}): the file is damaged; convert again")
