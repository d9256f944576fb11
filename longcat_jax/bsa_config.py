"""The JSON form of BSA settings: `{"enable_bsa": ..., "bsa_params": {...}}`, in a `--bsa-config` file or in a DiT
`config.json`. The only place where BSA settings are dicts: everything past these readers holds a
`kernels.BSAParams` (BSA on with those parameters) or None (dense attention).

`bsa_params` may leave out keys: a missing `cdf_threshold` is null; a missing `sparsity`, `chunk_3d_shape_q` or
`chunk_3d_shape_k` takes the released checkpoint's value (0.9375, [4, 4, 4], [4, 4, 4]; also the guide's
recommended preset, though the original's kernel function has other defaults), and each value filled in is
logged. Unknown keys and bad values are refused with a ConfigError that names the file and every bad key.

`read_bsa_config` takes a file or the name of a preset shipped in the package (`longcat_jax.configs`: `balanced`,
`quality`, `fast`, `adaptive`, `long_video`, `480p_no_bsa`, or a file name such as `config_720p_balanced.json`), so
presets work from any install and any working folder; an existing file of that name wins over the preset.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernels import BSAConfigError, BSAParams
from longcat_jax.configs import find_bsa_preset, short_preset_names
from longcat_jax.errors import ConfigError
from longcat_jax.json_io import read_json_object

logger = logging.getLogger(__name__)

BSA_KEYS = ("enable_bsa", "bsa_params")
PARAM_KEYS = ("sparsity", "cdf_threshold", "chunk_3d_shape_q", "chunk_3d_shape_k")
# The released checkpoint's bsa_params: what a missing key takes, and what the refinement runs with when the
# checkpoint has no bsa_params of its own.
RELEASED_PARAMS = BSAParams(sparsity=0.9375, cdf_threshold=None, chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4))


def read_bsa_config(path_or_preset: str | Path) -> BSAParams | None:
    """Reads and validates a `--bsa-config`: a JSON file, or a packaged preset's name (`balanced`,
    `config_720p_fast.json`, ...). Returns its parameters, or None where it turns BSA off."""
    path = Path(path_or_preset)
    preset = None if path.exists() else find_bsa_preset(str(path_or_preset))
    if preset is None:
        config = read_json_object(path, "BSA config", hint=f"pass a JSON file or a preset: {preset_list()}")
        return parse_bsa_config(config, source=str(path))
    config = json.loads(preset.read_text())
    return parse_bsa_config(config, source=f"BSA preset {str(path_or_preset)!r} ({preset.name})")


def preset_list() -> str:
    """The packaged presets, for messages: `balanced (config_720p_balanced.json), ...`."""
    return ", ".join(f"{name} ({file_name})" for name, file_name in short_preset_names().items())


def parse_bsa_config(config: Mapping[str, Any], *, source: str = "BSA config") -> BSAParams | None:
    """A `--bsa-config` object: exactly `enable_bsa` (bool) and `bsa_params` (object, or null when BSA is off).
    Returns the parameters, or None where `enable_bsa` is false."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: expected a JSON object with {list(BSA_KEYS)}, got {type(config).__name__}")
    problems = [f"unknown key {key!r} (a BSA config holds only {list(BSA_KEYS)})" for key in config if key not in BSA_KEYS]
    if "enable_bsa" not in config:
        problems.append("missing key 'enable_bsa' (true or false)")
    enable, params = _parse_pair(config.get("enable_bsa", False), config.get("bsa_params"), source, problems)
    return params if enable else None


def parse_dit_bsa(dit_config: Mapping[str, Any], *, source: str = "DiT config") -> tuple[bool, BSAParams | None]:
    """(`enable_bsa`, `bsa_params`) of a DiT `config.json` (absent: BSA off, no parameters); the DiT config
    parser's other keys are its own business."""
    return _parse_pair(dit_config.get("enable_bsa", False), dit_config.get("bsa_params"), source, [])


def params_to_json(params: BSAParams | None) -> dict[str, Any] | None:
    """`bsa_params` as the JSON configs write it (lists for chunk shapes), or None."""
    if params is None:
        return None
    return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(params).items()}


def _parse_pair(enable: Any, params: Any, source: str, problems: list[str]) -> tuple[bool, BSAParams | None]:
    """Validates `enable_bsa` and `bsa_params` together with the `problems` found before, raising one error
    that names every one of them."""
    if not isinstance(enable, bool):
        problems.append(f"'enable_bsa' must be true or false, got {enable!r}")
    parsed = None
    if params is None:
        if enable is True:
            problems.append(f"'enable_bsa' is true but 'bsa_params' is missing or null; give {{{', '.join(PARAM_KEYS)}}}")
    elif not isinstance(params, Mapping):
        problems.append(f"'bsa_params' must be an object or null, got {type(params).__name__}")
    else:
        parsed = _parse_params(params, source, problems)
    if problems:
        raise ConfigError(
            f"{source}: " + "; ".join(problems) + "; fix these (the presets in longcat_jax/configs/bsa/ are valid examples)"
        )
    return enable, parsed


def _parse_params(params: Mapping[str, Any], source: str, problems: list[str]) -> BSAParams | None:
    problems += [f"unknown key 'bsa_params.{key}' (known: {list(PARAM_KEYS)})" for key in params if key not in PARAM_KEYS]
    given = {key: value for key, value in params.items() if key in PARAM_KEYS}
    try:
        parsed = dataclasses.replace(RELEASED_PARAMS, **given)
    except BSAConfigError as err:
        problems.append(f"bad 'bsa_params': {err}")
        return None
    if not problems:
        for key in PARAM_KEYS:
            if key not in given:
                logger.info("%s: bsa_params.%s not given; BSA uses %s (the released checkpoint's value)", source, key,
                            json.dumps(params_to_json(parsed)[key]))
    return parsed
