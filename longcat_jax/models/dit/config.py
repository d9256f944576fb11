"""The DiT hyper-parameters, parsed from the original `dit/config.json`.

Only keys that change the computation are kept. Keys of the original that select a PyTorch
attention library or a multi-GPU split (they do not change the math) are accepted and ignored; any
other unknown key is refused, so a config from a different model never loads silently. The BSA keys
(`enable_bsa`, `bsa_params`) are read by `longcat_jax.bsa_config`, like a `--bsa-config` file; they are the
checkpoint's BSA default, which `longcat_jax.pipelines.bsa.resolve_bsa` weighs for each stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernels import BSAParams
from longcat_jax.bsa_config import params_to_json, parse_dit_bsa
from longcat_jax.errors import CheckpointError, ConfigError
from longcat_jax.json_io import read_json_object

# Original keys that pick an implementation (flash-attn, xformers, context parallel split) or are
# diffusers bookkeeping: they do not change the result, so they are read and ignored.
IGNORED_KEYS = frozenset(
    {
        "_class_name",
        "_diffusers_version",
        "_name_or_path",
        "enable_flashattn3",
        "enable_flashattn2",
        "enable_xformers",
        "cp_split_hw",
    }
)


def _int_triple(name: str, value: Any) -> tuple[int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise ConfigError(f"DiT config: {name} must be three positive ints, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Architecture of the LongCat video DiT (defaults: the released 13.6B model)."""

    in_channels: int = 16
    out_channels: int = 16
    hidden_size: int = 4096
    depth: int = 48
    num_heads: int = 32
    caption_channels: int = 4096
    mlp_ratio: int = 4
    adaln_tembed_dim: int = 512
    frequency_embedding_size: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    enable_bsa: bool = False
    bsa_params: BSAParams | None = None
    text_tokens_zero_pad: bool = False

    def __post_init__(self):
        object.__setattr__(self, "patch_size", _int_triple("patch_size", self.patch_size))
        if self.bsa_params is not None and not isinstance(self.bsa_params, BSAParams):
            raise ConfigError(
                f"DiT config: bsa_params must be a kernels.BSAParams or None, got {type(self.bsa_params).__name__}; "
                "read a JSON config with DiTConfig.from_dict"
            )
        for name in ("enable_bsa", "text_tokens_zero_pad"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"DiT config: {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("in_channels", "out_channels", "hidden_size", "depth", "num_heads", "caption_channels",
                     "mlp_ratio", "adaln_tembed_dim", "frequency_embedding_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"DiT config: {name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"DiT config: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.head_dim % 8:
            raise ConfigError(f"DiT config: head_dim {self.head_dim} must be a multiple of 8 for the 3D RoPE")
        if self.patch_size[0] != 1:
            raise ConfigError(f"DiT config: temporal patch size must be 1 (as the original), got {self.patch_size}")
        if self.enable_bsa and self.bsa_params is None:
            raise ConfigError("DiT config: enable_bsa is true but bsa_params is null; give bsa_params")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_hidden_size(self) -> int:
        """SwiGLU width: 2/3 of hidden * mlp_ratio, rounded up to a multiple of 256 (as the original)."""
        width = int(2 * (self.hidden_size * self.mlp_ratio) / 3)
        return 256 * ((width + 255) // 256)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "DiT config") -> DiTConfig:
        """The config of a parsed `config.json` object; `source` names it in errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known - IGNORED_KEYS)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {unknown}; is this the config.json of a LongCat-Video dit/ folder?"
            )
        enable_bsa, bsa_params = parse_dit_bsa(raw, source=source)
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in known}
        return cls(**{**values, "enable_bsa": enable_bsa, "bsa_params": bsa_params})

    @classmethod
    def from_json(cls, path: str | Path) -> DiTConfig:
        """Reads a `config.json` (a missing file is a CheckpointError: the checkpoint's dit/ folder is incomplete)."""
        raw = read_json_object(path, "DiT config", missing_error=CheckpointError,
                               hint="point at the dit/ folder of a LongCat-Video checkpoint, which holds its config.json")
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The config in the original's JSON form (so our converted folder reads like an original one)."""
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        out["bsa_params"] = params_to_json(self.bsa_params)
        return out
