"""The JSON form of BSA settings: `{"enable_bsa": ..., "bsa_params": {...}}`, in a `--bsa-config` file or in a DiT
`config.json`. The only place where BSA settings are dicts: everything past these readers holds a
`kernels.BSAParams` (BSA on with those parameters) or None (dense attention).

`bsa_params` may leave out keys: a missing `cdf_threshold` is null; a missing `sparsity`, `chunk_3d_shape_q` or
`chunk_3d_shape_k` takes the released checkpoint's value (0.9375, [4, 4, 4], [4, 4, 4]; also the guide's
recommended preset, though the original's kernel function has other defaults), and each value filled in is
logged. Unknown keys and bad values are refused with a ConfigError that names the file and every bad key.

`bsa_overrides` checks the command line's replacements of `bsa_params` values (`--bsa-sparsity`,
`--bsa-cdf-threshold`: a number, or `none` for null) by the same rules as a config file's values.

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
OVERRIDE_FLAGS = {"sparsity": "--bsa-sparsity", "cdf_threshold": "--bsa-cdf-threshold"}  # bsa_params key -> flag
NULL = "none"  # an override's value that turns its selection rule off (null in the JSON)


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


def parse_override_value(text: str) -> float | str:
    """A `--bsa-sparsity` / `--bsa-cdf-threshold` value as typed: a number, or `NULL` ('none' or 'null': that
    selection rule off)."""
    if text.strip().lower() in ("none", "null"):
        return NULL
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is neither a number nor 'none'") from None


def bsa_overrides(values: Mapping[str, float | str]) -> tuple[tuple[str, float | None], ...]:
    """The checked (key, value) replacements of `bsa_params` values, from {key: value} of the keys given
    (`OVERRIDE_FLAGS`; the value `NULL` is null). Each value is checked by the rules of a config file's (sparsity in
    [0, 1), cdf_threshold in (0, 1]); every bad one is named in one ConfigError, as are overrides that leave no
    selection rule at all."""
    unknown = sorted(set(values) - set(OVERRIDE_FLAGS))
    if unknown:
        raise ConfigError(f"bsa_params keys {unknown} cannot be overridden; the overridable keys are {list(OVERRIDE_FLAGS)}")
    changes = {key: None if values[key] == NULL else values[key] for key in OVERRIDE_FLAGS if key in values}
    # Both rules on, so that turning one off alone stays valid; what is given replaces them.
    try:
        dataclasses.replace(BSAParams(sparsity=0.5, cdf_threshold=0.5), **changes)
    except BSAConfigError as err:
        raise ConfigError(
            f"{describe_overrides(values)}: {err}; these flags take the values of bsa_params in a BSA config: "
            "sparsity in [0, 1) (the presets: 0.875 to 0.96875), cdf_threshold in (0, 1] (the adaptive preset: 0.98), "
            "or none for null"
        ) from err
    return tuple(changes.items())


def describe_overrides(values: Mapping[str, float | str | None]) -> str:
    """The flags that give `values` ({key: value}; `NULL` or None is null): `--bsa-sparsity 0.9 --bsa-cdf-threshold
    none`."""
    return " ".join(f"{OVERRIDE_FLAGS[key]} {'none' if value in (None, NULL) else f'{value:g}'}"
                    for key, value in values.items() if key in OVERRIDE_FLAGS)


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
