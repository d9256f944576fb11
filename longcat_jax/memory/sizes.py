"""Byte sizes as a user writes them (`24GiB`, `48GB`, `1.5TiB`) and as the plan's log lines print them.

Binary units (KiB, MiB, GiB, TiB: powers of 1024) and decimal ones (KB, MB, GB, TB: powers of 1000) are both
accepted, case-insensitively; a bare number or a one-letter unit (`24`, `24G`) is refused, since either reading
could be meant and they differ by 7% at GiB.
"""

from __future__ import annotations

import math
import re

from longcat_jax.errors import ConfigError

UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[A-Za-z]*)\s*$")
_EXAMPLE = "e.g. 24GiB (24 x 2^30 bytes) or 48GB (48 x 10^9 bytes)"


def parse_size(size: str | int, *, what: str = "--max-device-memory") -> int:
    """Bytes of `size`: a string like '24GiB' or '48 GB', or a positive int (bytes). Refuses anything else with
    a ConfigError naming `what` and the accepted forms."""
    if isinstance(size, bool) or not isinstance(size, (str, int)):
        raise ConfigError(f"{what} takes a size like '24GiB' or a number of bytes, got {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ConfigError(f"{what} must be positive, got {size} bytes")
        return size
    match = _SIZE.match(size)
    if match is None:
        raise ConfigError(f"{what} {size!r} is not a size; write a number and a unit, {_EXAMPLE}")
    unit = match["unit"].lower()
    if not unit:
        raise ConfigError(f"{what} {size!r} has no unit; {_EXAMPLE}")
    if unit not in UNITS:
        hint = f" ({unit.upper()}iB or {unit.upper()}B?)" if unit in ("k", "m", "g", "t") else ""
        raise ConfigError(f"{what} {size!r}: unknown unit {match['unit']!r}{hint}; use one of "
                          f"{', '.join(('B', 'KB', 'MB', 'GB', 'TB', 'KiB', 'MiB', 'GiB', 'TiB'))}, {_EXAMPLE}")
    value = float(match["number"]) * UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"{what} {size!r} must be at least one byte")
    return int(value)


def format_size(num_bytes: float) -> str:
    """`num_bytes` in the largest binary unit that keeps the number at or above 1, two decimals: '23.50 GiB'."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"
