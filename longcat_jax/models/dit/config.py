"""The DiT hyper-parameters, parsed from the original `dit/config.json` (or FastVideo's `transformer/config.json`).

Only keys that change the computation are kept. Keys of the original that select a PyTorch
attention library or a multi-GPU split (they do not change the math) are accepted and ignored; any
other unknown key is refused, so a config from a different model never loads silently. The BSA keys
(`enable_bsa`, `bsa_params`) are read by `longcat_jax.bsa_config`, like a `--bsa-config` file; they are the
checkpoint's BSA default, which `longcat_jax.pipelines.bsa.resolve_bsa` weighs for each stage.

FastVideo's conversion of the checkpoint renames `num_heads` to `num_attention_heads` and sets its own
`_class_name`; `original_form` puts both back, so either config reads the same.

A config without any architecture key (`ARCHITECTURE_KEYS`) is refused: it would otherwise silently build the
released 13.6B model from the defaults. The common way to get one is "method 1" of FastVideo's BSA guide, copying
a BSA preset over the model's config.json: our presets (`longcat_jax/configs/bsa/`) hold only the BSA keys, so the
copy replaces the model's config. That file is refused with what happened and the fix (restore config.json, pass
the preset with `--bsa-config`, or add its two keys to config.json: "method 2"). We chose this over presets that
carry a whole model config: one preset then serves every checkpoint, and `--bsa-config` needs no model keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernels import BSAParams
from longcat_jax.bsa_config import BSA_KEYS, params_to_json, parse_dit_bsa
from longcat_jax.checkpoint.hub import FASTVIDEO_REPO, RELEASED_REPO
from longcat_jax.checkpoint.layout import DIT, FASTVIDEO_DIT
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


# The keys that fix the model's shape; a config.json with none of them is refused (see the module docstring).
ARCHITECTURE_KEYS = (
    "in_channels",
    "out_channels",
    "hidden_size",
    "depth",
    "num_heads",
    "caption_channels",
    "mlp_ratio",
    "adaln_tembed_dim",
    "frequency_embedding_size",
    "patch_size",
)
# FastVideo's transformer/config.json: its name of a key -> the original's, and its `_class_name` -> the original's.
FASTVIDEO_KEYS = {"num_attention_heads": "num_heads"}
FASTVIDEO_CLASS_NAME = "LongCatTransformer3DModel"
ORIGINAL_CLASS_NAME = "LongCatVideoTransformer3DModel"


def original_form(raw: Mapping[str, Any], *, source: str = "DiT config") -> dict[str, Any]:
    """A DiT config.json object with FastVideo's key and class names put back to the original's (the original's
    own config comes back unchanged). A key given under both names with two values is a ConfigError."""
    out = dict(raw)
    for theirs, ours in FASTVIDEO_KEYS.items():
        if theirs not in out:
            continue
        value = out.pop(theirs)
        if ours in out and out[ours] != value:
            raise ConfigError(f"{source}: {theirs}={value!r} (FastVideo's name) and {ours}={out[ours]!r} disagree; "
                              "keep one of them, the one of the downloaded config.json")
        out[ours] = value
    if out.get("_class_name") == FASTVIDEO_CLASS_NAME:
        out["_class_name"] = ORIGINAL_CLASS_NAME
    return out


def _restore_hint(folder: str) -> str:
    repo = FASTVIDEO_REPO if folder == FASTVIDEO_DIT else RELEASED_REPO
    return (f"restore {folder}/config.json from the download it came from (for the hub's {repo}: "
            f"`hf download {repo} {folder}/config.json --local-dir MODEL_FOLDER`)")


def _require_architecture(raw: Mapping[str, Any], source: str, folder: str) -> None:
    """Refuses a config that holds none of the keys fixing the model's shape, saying why it is likely so and the fix.
    (A config with some of them takes the dataclass defaults, the released model's values, for the others.)"""
    if any(key in raw for key in ARCHITECTURE_KEYS):
        return
    if any(key in raw for key in BSA_KEYS):
        raise ConfigError(
            f"{source} holds BSA settings but none of the model's architecture keys ({', '.join(ARCHITECTURE_KEYS)}): "
            "it looks like a BSA preset copied over the model's config.json (\"method 1\" of FastVideo's BSA guide). "
            "Our presets hold only the BSA keys, so the copy replaced the model's config. To fix it, "
            f"{_restore_hint(folder)}; then choose BSA per run with --bsa-config PRESET (a file, or a preset name "
            "such as balanced), or add the preset's enable_bsa and bsa_params keys to the restored config.json "
            "(\"method 2\")"
        )
    raise ConfigError(
        f"{source} holds none of the model's architecture keys ({', '.join(ARCHITECTURE_KEYS)}), so it cannot say "
        f"which model to build; {_restore_hint(folder)}"
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
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "DiT config", folder: str = DIT) -> DiTConfig:
        """The config of a parsed `config.json` object (the original's or FastVideo's); `source` names it in errors,
        `folder` (`dit` or FastVideo's `transformer`) is the checkpoint folder it belongs in, for the fix."""
        raw = original_form(raw, source=source)
        _require_architecture(raw, source, folder)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known - IGNORED_KEYS)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {unknown}; is this the config.json of a LongCat-Video dit/ folder (or of "
                f"FastVideo's {FASTVIDEO_DIT}/)?"
            )
        enable_bsa, bsa_params = parse_dit_bsa(raw, source=source)
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in known}
        return cls(**{**values, "enable_bsa": enable_bsa, "bsa_params": bsa_params})

    @classmethod
    def from_json(cls, path: str | Path) -> DiTConfig:
        """Reads a `config.json` (a missing file is a CheckpointError: the checkpoint's dit/ folder is incomplete)."""
        path = Path(path)
        raw = read_json_object(path, "DiT config", missing_error=CheckpointError,
                               hint="point at the dit/ folder of a LongCat-Video checkpoint, which holds its config.json")
        folder = FASTVIDEO_DIT if path.parent.name == FASTVIDEO_DIT else DIT
        return cls.from_dict(raw, source=str(path), folder=folder)

    def to_dict(self) -> dict[str, Any]:
        """The config in the original's JSON form (so our converted folder reads like an original one)."""
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        out["bsa_params"] = params_to_json(self.bsa_params)
        return out
