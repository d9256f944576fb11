"""Reading the JSON files of a checkpoint or of our configs, with errors that name the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longcat_jax.errors import ConfigError, LongCatError


def read_json_object(path: str | Path, what: str, *, missing_error: type[LongCatError] = ConfigError,
                     hint: str = "") -> dict[str, Any]:
    """The JSON object in `path` (`what` names the file in errors, e.g. "DiT config").

    A missing file raises `missing_error` (CheckpointError where the file is part of a checkpoint), with
    `hint` appended; invalid JSON or a non-object raises ConfigError.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_error(f"{what} {path} not found" + (f"; {hint}" if hint else ""))
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} is not valid JSON ({e}); restore the file") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object, got {type(raw).__name__}")
    return raw
