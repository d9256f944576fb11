"""The JSON BSA configs users know: `{"enable_bsa": ..., "bsa_params": {...}}`, alone or inside `dit/config.json`.

A `--bsa-config FILE` holds only those two keys; the same two keys in a DiT `config.json` set the model's default.
The file overrides the model: `merge_into_dit_config` writes its keys over the DiT config's. `bsa_params` must name
all four of `sparsity`, `cdf_threshold`, `chunk_3d_shape_q`, `chunk_3d_shape_k` (null where unused), so no
silent default decides how sparse attention is. Values are validated by `kernels.BSAParams`; every refusal is a
ConfigError naming the file and the key.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from kernels import BSAConfigError, BSAParams
from longcat_jax.errors import ConfigError
from longcat_jax.json_io import read_json_object

logger = logging.getLogger(__name__)

ENABLE_MESSAGE = "Enabling Block Sparse Attention (BSA) for LongCat transformer"
BSA_KEYS = ("enable_bsa", "bsa_params")
PARAM_KEYS = ("sparsity", "cdf_threshold", "chunk_3d_shape_q", "chunk_3d_shape_k")


@dataclass(frozen=True)
class BSAConfig:
    """Whether the DiT's self-attention is block-sparse, and with which parameters (None when never set)."""

    enable_bsa: bool
    params: BSAParams | None

    def params_dict(self) -> dict[str, Any] | None:
        """`bsa_params` as the JSON configs write it (lists for chunk shapes), or None."""
        if self.params is None:
            return None
        return {
            "sparsity": self.params.sparsity,
            "cdf_threshold": self.params.cdf_threshold,
            "chunk_3d_shape_q": list(self.params.chunk_3d_shape_q),
            "chunk_3d_shape_k": list(self.params.chunk_3d_shape_k),
        }

    def to_json_dict(self) -> dict[str, Any]:
        """The config as a `--bsa-config` file holds it."""
        return {"enable_bsa": self.enable_bsa, "bsa_params": self.params_dict()}


def parse_bsa_config(config: Mapping[str, Any], *, source: str = "BSA config") -> BSAConfig:
    """Validates a `--bsa-config` dict: exactly `enable_bsa` (bool) and optionally `bsa_params` (object or null)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: expected a JSON object with {list(BSA_KEYS)}, got {type(config).__name__}")
    for key in config:
        if key not in BSA_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}; a BSA config holds only {list(BSA_KEYS)}")
    if "enable_bsa" not in config:
        raise ConfigError(f"{source}: missing key 'enable_bsa' (true or false)")
    return _parse_pair(config["enable_bsa"], config.get("bsa_params"), source=source)


def bsa_from_dit_config(dit_config: Mapping[str, Any], *, source: str = "dit/config.json") -> BSAConfig:
    """The BSA settings inside a DiT `config.json` (its other keys are the DiT config parser's business)."""
    return _parse_pair(dit_config.get("enable_bsa", False), dit_config.get("bsa_params"), source=source)


def load_bsa_config(path: str | Path) -> BSAConfig:
    """Reads and validates a `--bsa-config` JSON file."""
    config = read_json_object(path, "BSA config", hint="pass a file such as configs/bsa/config_720p_balanced.json")
    return parse_bsa_config(config, source=str(path))


def merge_into_dit_config(dit_config: Mapping[str, Any], override: BSAConfig) -> dict[str, Any]:
    """A copy of a DiT config dict with `enable_bsa` and `bsa_params` from `override`.

    An override without parameters (BSA off, `bsa_params` null) keeps the DiT config's own `bsa_params`, so BSA
    can still be switched on later with the model's parameters. The result is validated.
    """
    merged = dict(dit_config)
    merged["enable_bsa"] = override.enable_bsa
    if override.params is not None:
        merged["bsa_params"] = override.params_dict()
    bsa_from_dit_config(merged, source="merged DiT config")
    return merged


def log_bsa(config: BSAConfig, log: logging.Logger = logger) -> None:
    """Logs the two lines users grep for when BSA is on: the enable message and `BSA parameters: {...}`."""
    if config.enable_bsa:
        log.info(ENABLE_MESSAGE)
        log.info("BSA parameters: %s", json.dumps(config.params_dict()))


def _parse_pair(enable: Any, params: Any, *, source: str) -> BSAConfig:
    if not isinstance(enable, bool):
        raise ConfigError(f"{source}: 'enable_bsa' must be true or false, got {enable!r}")
    if params is None:
        if enable:
            raise ConfigError(
                f"{source}: 'enable_bsa' is true but 'bsa_params' is missing or null; give "
                f"{{{', '.join(repr(k) for k in PARAM_KEYS)}}}"
            )
        return BSAConfig(enable_bsa=False, params=None)
    return BSAConfig(enable_bsa=enable, params=_parse_params(params, source=source))


def _parse_params(params: Any, *, source: str) -> BSAParams:
    if not isinstance(params, Mapping):
        raise ConfigError(f"{source}: 'bsa_params' must be an object or null, got {type(params).__name__}")
    for key in params:
        if key not in PARAM_KEYS:
            raise ConfigError(f"{source}: unknown key 'bsa_params.{key}'; known keys are {list(PARAM_KEYS)}")
    for key in PARAM_KEYS:
        if key not in params:
            raise ConfigError(f"{source}: missing key 'bsa_params.{key}' (write null to leave a rule unused)")
    try:
        return BSAParams.from_dict(params)
    except BSAConfigError as err:
        raise ConfigError(f"{source}: bad 'bsa_params': {err}") from err
