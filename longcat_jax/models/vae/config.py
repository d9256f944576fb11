"""Configuration of the Wan 2.1 video VAE (`AutoencoderKLWan`), parsed from the original `vae/config.json`.

The same dataclass also derives the layer plan of the encoder and decoder, so the model and the
checkpoint converter agree on which original module sits at which index.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from longcat_jax.errors import ConfigError
from longcat_jax.json_io import read_json_object

# Keys of the original config that describe the file, not the model.
_IGNORED_KEYS = frozenset({"_class_name", "_diffusers_version", "_name_or_path", "dropout"})

# Keys that would select a different architecture (Wan 2.2); accepted only at the Wan 2.1 values.
_FIXED_KEYS = {"is_residual": False, "patch_size": None}

# The original splits videos into a first frame and then chunks of this many frames.
FRAMES_PER_CHUNK = 4

# Per-channel latent statistics of the released Wan 2.1 VAE (the original's defaults).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of `AutoencoderKLWan` (Wan 2.1), names as in the original config."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    in_channels: int = 3
    out_channels: int = 3
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    scale_factor_spatial: int = 8
    scale_factor_temporal: int = 4

    def __post_init__(self):
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ConfigError(
                f"temperal_downsample has {len(self.temperal_downsample)} entries, dim_mult "
                f"{len(self.dim_mult)}: it needs one per downsampling stage ({len(self.dim_mult) - 1})"
            )
        spatial = 2 ** (len(self.dim_mult) - 1)
        if spatial != self.scale_factor_spatial:
            raise ConfigError(
                f"scale_factor_spatial {self.scale_factor_spatial} does not match the {spatial}x "
                f"spatial compression of dim_mult {list(self.dim_mult)}"
            )
        temporal = 2 ** sum(bool(t) for t in self.temperal_downsample)
        if temporal != FRAMES_PER_CHUNK or self.scale_factor_temporal != FRAMES_PER_CHUNK:
            raise ConfigError(
                f"only 4x temporal compression is supported (two True in temperal_downsample and "
                f"scale_factor_temporal 4, as the Wan 2.1 VAE); got temperal_downsample "
                f"{list(self.temperal_downsample)}, scale_factor_temporal {self.scale_factor_temporal}"
            )
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ConfigError(f"{name} has {len(getattr(self, name))} entries; z_dim is {self.z_dim}")
        if any(s <= 0 for s in self.latents_std):
            raise ConfigError("latents_std entries must be positive")

    @property
    def decoder_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    @property
    def temperal_upsample(self) -> tuple[bool, ...]:
        return tuple(reversed(self.temperal_downsample))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VAEConfig:
        """Parses the original config dict; unknown keys are refused so a different model is never misread."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in _IGNORED_KEYS:
                continue
            if key in _FIXED_KEYS:
                if value != _FIXED_KEYS[key]:
                    raise ConfigError(
                        f"VAE config {key}={value!r} selects the Wan 2.2 VAE; only the Wan 2.1 "
                        f"AutoencoderKLWan ({key}={_FIXED_KEYS[key]!r}) is supported"
                    )
                continue
            if key not in fields:
                raise ConfigError(f"unknown VAE config key {key!r}; is this an AutoencoderKLWan config.json?")
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"invalid VAE config: {e}") from e

    @classmethod
    def from_json(cls, path: str | Path) -> VAEConfig:
        return cls.from_dict(read_json_object(path, "VAE config"))

    def to_dict(self) -> dict[str, Any]:
        """The original-format dict (round-trips through `from_dict`)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        out["_class_name"] = "AutoencoderKLWan"
        return out


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One entry of the encoder's flat layer list: kind is 'res', 'attn', 'down2d' or 'down3d'."""

    kind: str
    in_dim: int
    out_dim: int


def encoder_plan(config: VAEConfig) -> list[LayerSpec]:
    """The encoder's downsampling layers in the original order (`encoder.down_blocks.{i}`)."""
    dims = [config.base_dim * m for m in (1, *config.dim_mult)]
    plan: list[LayerSpec] = []
    scale = 1.0
    last = len(config.dim_mult) - 1
    for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(config.num_res_blocks):
            plan.append(LayerSpec("res", in_dim, out_dim))
            if scale in config.attn_scales:
                plan.append(LayerSpec("attn", out_dim, out_dim))
            in_dim = out_dim
        if stage != last:
            kind = "down3d" if config.temperal_downsample[stage] else "down2d"
            plan.append(LayerSpec(kind, out_dim, out_dim))
            scale /= 2.0
    return plan


@dataclasses.dataclass(frozen=True)
class UpStageSpec:
    """One decoder stage: `num_res_blocks + 1` residual blocks, then an optional 'up2d'/'up3d' resample."""

    in_dim: int
    out_dim: int
    num_blocks: int
    upsample: str | None


def decoder_plan(config: VAEConfig) -> list[UpStageSpec]:
    """The decoder's stages in the original order (`decoder.up_blocks.{i}`)."""
    mult = config.dim_mult
    dims = [config.decoder_dim * m for m in (mult[-1], *reversed(mult))]
    last = len(mult) - 1
    stages = []
    for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        if stage > 0:
            in_dim //= 2  # the previous stage's resample conv halves the channels
        upsample = None
        if stage != last:
            upsample = "up3d" if config.temperal_upsample[stage] else "up2d"
        stages.append(UpStageSpec(in_dim, out_dim, config.num_res_blocks + 1, upsample))
    return stages


def encoder_out_dim(config: VAEConfig) -> int:
    return config.base_dim * config.dim_mult[-1]


def decoder_in_dim(config: VAEConfig) -> int:
    return config.decoder_dim * config.dim_mult[-1]
