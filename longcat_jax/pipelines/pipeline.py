"""`LongCatPipeline`: the three models, tokenizer, scheduler config, BSA settings and LoRAs of one checkpoint.

    pipe = LongCatPipeline.from_pretrained("LongCat-Video", dtype=jnp.bfloat16)   # original or converted folder
    pipe = LongCatPipeline.builtin()                                               # tiny random model, no download

The task functions (`t2v.generate_t2v`, `i2v.generate_i2v`, `continuation.generate_continuation`,
`continuation.generate_long_video`, `refine.generate_refine`) take a pipeline. It configures the DiT per stage
(`use_dit`: BSA on/off, which LoRAs), encodes prompts once (cached, so the encoder can be released early) and
moves between pixels and normalised latents (`encode_frames`, `decode_latents`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kernels import BSAParams
from longcat_jax.bsa_config import BSAConfig, bsa_from_dit_config, load_bsa_config, log_bsa, merge_into_dit_config
from longcat_jax.errors import CheckpointError, InputError
from longcat_jax.json_io import read_json_object
from longcat_jax.models.dit import LoRA, LongCatDiT, disable_loras, enable_loras, load_dit, load_lora
from longcat_jax.models.text_encoder.loading import load_text_encoder
from longcat_jax.models.text_encoder.prompt import encode_prompt, is_released, release_text_encoder
from longcat_jax.models.text_encoder.tokenizer import load_tokenizer
from longcat_jax.models.vae import load_vae
from longcat_jax.pipelines.buckets import nearest_bucket
from longcat_jax.pipelines.denoise import Denoiser, TextCondition
from longcat_jax.pipelines.scheduler import SchedulerConfig
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.sharding.spatial import split_spatially, to_host
from longcat_jax.tiny import TINY_DIT_CONFIG, build_tiny_models
from longcat_jax.video_io import to_uint8_frames

logger = logging.getLogger(__name__)

REQUIRED_PARTS = ("dit", "vae", "text_encoder", "tokenizer")
DISTILL_LORA = "cfg_step_lora"
REFINE_LORA = "refinement_lora"
LATENT_PATCH = 16  # pixels per DiT token side: VAE 8x times patch 2


@dataclasses.dataclass(frozen=True)
class PipelineDefaults:
    """Sizes and step counts a run uses unless told otherwise (the original's for a real checkpoint).

    size_scale: the bucket tables are scaled by it (1 for the real model; the tiny model works at 1/4 size).
    """

    height: int = 480
    width: int = 832
    num_frames: int = 93
    num_inference_steps: int = 50
    distill_inference_steps: int = 16
    guidance_scale: float = 4.0
    num_cond_frames: int = 13
    refine_inference_steps: int = 50
    size_scale: float = 1.0
    max_sequence_length: int = 512
    fps: float = 15.0


TINY_DEFAULTS = PipelineDefaults(
    height=128,
    width=208,
    num_frames=13,
    num_inference_steps=4,
    distill_inference_steps=4,
    num_cond_frames=5,
    refine_inference_steps=8,
    size_scale=0.25,
    max_sequence_length=64,
)


@dataclasses.dataclass(frozen=True)
class GeneratedVideo:
    """A task's result: uint8 frames [F, H, W, 3] and the frame rate to play them at."""

    frames: np.ndarray
    fps: float


def bucket_for(
    height: int, width: int, defaults: PipelineDefaults, resolution: str = "480p", side_multiple: int = 16
) -> tuple[int, int]:
    """The bucket for a frame of this size: the original's tables, scaled by `defaults.size_scale` (the small
    built-in model works at 1/4 of the real sizes), sides kept multiples of `side_multiple`."""
    bucket_h, bucket_w = nearest_bucket(height, width, resolution, side_multiple)
    scale = defaults.size_scale
    if scale == 1.0:
        return bucket_h, bucket_w
    return (
        max(side_multiple, round(bucket_h * scale / side_multiple) * side_multiple),
        max(side_multiple, round(bucket_w * scale / side_multiple) * side_multiple),
    )


def token_grid(latent_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(T, H, W) tokens of the DiT for `latent_frames` latent frames of a height x width video."""
    return latent_frames, height // LATENT_PATCH, width // LATENT_PATCH


def check_checkpoint(model_path: str | Path, *, loras: Sequence[str] = ()) -> Path:
    """Refuses a checkpoint folder that lacks a part the run needs, naming it; returns the folder."""
    path = Path(model_path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} not found; pass --model-path to a LongCat-Video download")
    missing = [part for part in REQUIRED_PARTS if not (path / part).is_dir()]
    missing += [f"lora/{name}.safetensors" for name in loras if lora_path(path, name) is None]
    if missing:
        raise CheckpointError(
            f"checkpoint folder {path} lacks {', '.join(missing)}; download the complete LongCat-Video checkpoint "
            f"(it has {', '.join(REQUIRED_PARTS)}, scheduler and lora/) or convert it with `python -m convert`"
        )
    return path


def lora_path(model_path: Path, name: str) -> Path | None:
    """The checkpoint's LoRA `name`: `lora/<name>.safetensors`, or `lora/<name>/` converted; None if absent."""
    for candidate in (model_path / "lora" / f"{name}.safetensors", model_path / "lora" / name):
        if candidate.exists():
            return candidate
    return None


def parse_lora_arg(spec: str) -> tuple[Path, float]:
    """`PATH[:MULTIPLIER]` -> (path, multiplier); refuses a missing file or a bad multiplier."""
    path, multiplier = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            multiplier = float(tail)
            path = head
        except ValueError:
            path = spec
    if not Path(path).exists():
        raise InputError(f"LoRA {path} not found; --lora takes PATH[:MULTIPLIER], e.g. my_lora.safetensors:0.8")
    return Path(path), multiplier


class LongCatPipeline:
    """The models of one checkpoint and what a run needs around them (see the module docstring)."""

    def __init__(
        self,
        dit: LongCatDiT,
        vae,
        text_encoder,
        tokenizer,
        *,
        scheduler_config: SchedulerConfig | None = None,
        bsa: BSAConfig | None = None,
        loras: Sequence[LoRA] = (),
        named_loras: dict[str, LoRA | Path] | None = None,
        defaults: PipelineDefaults = PipelineDefaults(),
        builtin: bool = False,
    ):
        self.dit = dit
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_config = scheduler_config or SchedulerConfig()
        self.bsa = bsa or BSAConfig(dit.bsa is not None, dit.bsa or dit.config.bsa_params)
        self.user_loras = list(loras)
        self._named_loras = dict(named_loras or {})
        self.defaults = defaults
        self.builtin = builtin
        self.stats = RunStats()
        self._texts: dict[str, tuple[jax.Array, jax.Array]] = {}
        self._dit_setting: tuple | None = None
        self._denoiser: Denoiser | None = None
        self.mesh = None  # set by longcat_jax.sharding.shard_pipeline: the VAE then works in strips over it

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | Path,
        dtype=jnp.bfloat16,
        bsa_config: str | Path | BSAConfig | None = None,
        loras: Sequence[str | tuple[str | Path, float] | LoRA] = (),
    ) -> "LongCatPipeline":
        """Loads an original LongCat-Video checkpoint folder or our converted one.

        dtype: weights and activations of the DiT, VAE and text encoder (bfloat16 for real use, float32 for
        checks). bsa_config: a `--bsa-config` file (or parsed config) overriding the DiT config.json's BSA keys.
        loras: extra LoRAs applied in every stage, as paths (`PATH[:MULTIPLIER]`), (path, multiplier) or LoRA.
        """
        path = check_checkpoint(model_path)
        user_loras = [_as_lora(spec) for spec in loras]
        bsa = _resolve_bsa(path / "dit", bsa_config)
        dit = load_dit(path / "dit", dtype=dtype, bsa=bsa.params if bsa.enable_bsa else False)
        vae = load_vae(path / "vae", dtype=dtype)
        text_encoder = load_text_encoder(path / "text_encoder", dtype=dtype)
        tokenizer = load_tokenizer(path / "tokenizer")
        named = {name: p for name in (DISTILL_LORA, REFINE_LORA) if (p := lora_path(path, name)) is not None}
        return cls(
            dit,
            vae,
            text_encoder,
            tokenizer,
            scheduler_config=SchedulerConfig.load(path),
            bsa=bsa,
            loras=user_loras,
            named_loras=named,
        )

    @classmethod
    def builtin(
        cls,
        dtype=jnp.float32,
        bsa_config: str | Path | BSAConfig | None = None,
        loras: Sequence[str | tuple[str | Path, float] | LoRA] = (),
    ) -> "LongCatPipeline":
        """The small built-in model (random weights, logged as such) with stand-in distill/refinement LoRAs."""
        models = build_tiny_models(dtype=dtype)
        bsa = builtin_bsa(bsa_config)
        models.dit.set_bsa(bsa.params if bsa.enable_bsa else False)
        return cls(
            models.dit,
            models.vae,
            models.text_encoder,
            models.tokenizer,
            bsa=bsa,
            loras=[_as_lora(spec) for spec in loras],
            named_loras=models.loras,
            defaults=TINY_DEFAULTS,
            builtin=True,
        )

    def named_lora(self, name: str) -> LoRA:
        """The checkpoint's `cfg_step_lora` or `refinement_lora`, read on first use."""
        entry = self._named_loras.get(name)
        if entry is None:
            raise CheckpointError(f"this checkpoint has no lora/{name}.safetensors; download the lora/ folder")
        if not isinstance(entry, LoRA):
            entry = load_lora(entry, name=name)
            self._named_loras[name] = entry
        return entry

    # ------------------------------------------------------------------------------------------------- the DiT

    def refine_bsa(self) -> BSAConfig:
        """Refinement's BSA (on, as the original's refinement): the pipeline's parameters, or the defaults."""
        return BSAConfig(True, self.bsa.params or BSAParams())

    def use_dit(self, *, bsa: BSAConfig, loras: Sequence[LoRA] = ()) -> Denoiser:
        """Sets the DiT's block-sparse attention and run-time LoRAs (the user's are added) for the next stage."""
        loras = [*loras, *self.user_loras]
        params = bsa.params if bsa.enable_bsa else None
        setting = (params, tuple((id(lora), lora.multiplier) for lora in loras))
        if setting != self._dit_setting:
            self.dit.set_bsa(params if params is not None else False)
            if loras:
                enable_loras(self.dit, loras)
            else:
                disable_loras(self.dit)
            self._dit_setting = setting
            self._denoiser = Denoiser(self.dit)
            if loras:
                logger.info("LoRAs on: %s", ", ".join(f"{lora.name} x{lora.multiplier:g}" for lora in loras))
        log_bsa(bsa, logger)
        return self._denoiser

    # ------------------------------------------------------------------------------------------------ the text

    def encode_text(self, prompt: str, negative_prompt: str | None = None) -> TextCondition:
        """Embeddings of `prompt` (and of `negative_prompt` for guidance), cached per prompt."""
        missing = [p for p in (prompt, negative_prompt) if p is not None and p not in self._texts]
        if missing:
            if is_released(self.text_encoder):
                raise InputError(f"prompt {missing[0]!r} was not encoded before the text encoder was released")
            with self.stats.stage("text encoding"):
                encoded = encode_prompt(
                    self.text_encoder, self.tokenizer, missing, max_length=self.defaults.max_sequence_length,
                    dtype=self.dit.dtype,
                )
                for index, text in enumerate(missing):
                    self._texts[text] = (encoded.embeddings[index : index + 1], encoded.mask[index : index + 1])
        embeddings, mask = self._texts[prompt]
        if negative_prompt is None:
            return TextCondition(embeddings, mask)
        return TextCondition(embeddings, mask, *self._texts[negative_prompt])

    def release_text_encoder(self) -> None:
        """Frees the text encoder's memory; prompts encoded before stay usable."""
        if not is_released(self.text_encoder):
            release_text_encoder(self.text_encoder)

    # ------------------------------------------------------------------------------------------------ the VAE

    def encode_frames(self, video: jax.Array | np.ndarray, key: jax.Array) -> jax.Array:
        """Video [1, 3, F, H, W] in [-1, 1] -> normalised latents [1, C, T, H/8, W/8], sampled from the posterior
        with `key` as the original does. F = 4k (no leading single frame) drops its last 3 frames, as the
        original's chunked encoder does."""
        frames = video.shape[2]
        usable = 1 + (frames - 1) // 4 * 4
        if usable != frames:
            video = video[:, :, :usable]
        video = jnp.asarray(video, self.vae.dtype)
        if self.mesh is not None:
            video = split_spatially(video, self.mesh)
        distribution = self.vae.encode(video)
        return self.vae.normalize(distribution.sample(key).astype(jnp.float32))

    def decode_latents(self, latents: jax.Array) -> np.ndarray:
        """Normalised latents [1, C, T, h, w] -> uint8 frames [1 + 4 (T - 1), 8h, 8w, 3]."""
        latents = self.vae.denormalize(latents).astype(self.vae.dtype)
        if self.mesh is not None:
            latents = split_spatially(latents, self.mesh)
        video = self.vae.decode(latents)
        return to_host(to_uint8_frames(video))

    # ------------------------------------------------------------------------------------------------ sizes

    def noise(self, key: jax.Array, latent_frames: int, height: int, width: int) -> jax.Array:
        """Standard normal latents [1, C, T, H/8, W/8] float32."""
        factor = self.vae.spatial_factor
        shape = (1, self.dit.config.in_channels, latent_frames, height // factor, width // factor)
        return jax.random.normal(key, shape, jnp.float32)


def _as_lora(spec: str | tuple[str | Path, float] | LoRA) -> LoRA:
    if isinstance(spec, LoRA):
        return spec
    path, multiplier = parse_lora_arg(spec) if isinstance(spec, str) else (Path(spec[0]), float(spec[1]))
    return load_lora(path, multiplier=multiplier)


def checkpoint_bsa(model_path: str | Path, override: str | Path | BSAConfig | None = None) -> BSAConfig:
    """The BSA settings of a checkpoint's `dit/config.json`, overridden by a `--bsa-config` file; reads configs
    only, so the CLI can check sizes against them before loading anything."""
    return _resolve_bsa(Path(model_path) / "dit", override)


def builtin_bsa(override: str | Path | BSAConfig | None = None) -> BSAConfig:
    """The BSA settings of the small built-in model (off, with 0.75 sparsity parameters), overridden like above."""
    return _merge_bsa(bsa_from_dit_config(TINY_DIT_CONFIG.to_dict()), override, TINY_DIT_CONFIG.to_dict())


def _resolve_bsa(dit_dir: Path, override: str | Path | BSAConfig | None) -> BSAConfig:
    dit_config = read_json_object(dit_dir / "config.json", "DiT config", missing_error=CheckpointError,
                                  hint="the dit/ folder of the checkpoint needs its config.json")
    return _merge_bsa(bsa_from_dit_config(dit_config, source=str(dit_dir / "config.json")), override, dit_config)


def _merge_bsa(model: BSAConfig, override: str | Path | BSAConfig | None, dit_config: dict) -> BSAConfig:
    if override is None:
        return model
    override = override if isinstance(override, BSAConfig) else load_bsa_config(override)
    return bsa_from_dit_config(merge_into_dit_config(dit_config, override))
