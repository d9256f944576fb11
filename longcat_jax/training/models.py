"""The models training uses: the frozen base DiT, and (for `--prepare` only) the VAE, UMT5 and tokenizer.

Without `model_path` the built-in tiny model (random weights) stands in, so the whole path runs on a CPU in
seconds. The run presets (the built-in model's configs, both models' generation defaults) are imported lazily in
`_presets`, the one place to change if they move. A checkpoint is the
original LongCat-Video download or our converted folder, exactly as `python -m longcat_jax.generate` takes it.
"""

from __future__ import annotations

import dataclasses
import logging

import jax.numpy as jnp

from kernels import KernelConfig
from longcat_jax.checkpoint.layout import TEXT_ENCODER, TOKENIZER, VAE, check_checkpoint, dit_folder
from longcat_jax.models.dit import DiTConfig, LongCatDiT, load_dit
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.models.dit.quantized_linear import quantize_linears
from longcat_jax.quantization import check_quantize_supported
from longcat_jax.training.config import TrainConfig

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    """What the cached data must match for the model's generation to use the LoRA as trained.

    size_scale: the bucket tables are scaled by it (1 for LongCat; the built-in model works at a quarter size);
    text_length: tokens per prompt, padding included, as generation encodes prompts (the DiT attends to the
    padded positions, so their number is part of what it learns).
    """

    size_scale: float
    text_length: int


@dataclasses.dataclass
class Encoders:
    """What `--prepare` encodes with."""

    vae: object
    text_encoder: object
    tokenizer: object


def _presets():
    """The run presets module (built-in model configs, generation defaults)."""
    from longcat_jax import presets

    return presets


def generation_defaults(config: TrainConfig):
    """The `presets.PipelineDefaults` generation uses with the model trained (sizes, steps, guidance, ...)."""
    presets = _presets()
    return presets.TINY_DEFAULTS if config.builtin else presets.RELEASED_DEFAULTS


def model_sizes(config: TrainConfig) -> ModelSizes:
    """The `ModelSizes` of the model trained, from the generation defaults of its preset."""
    defaults = generation_defaults(config)
    return ModelSizes(defaults.size_scale, defaults.max_sequence_length)


def base_dit_config(config: TrainConfig) -> DiTConfig:
    """The config of the DiT `config` trains, read without loading its weights."""
    if config.builtin:
        return _presets().TINY_DIT_CONFIG
    return DiTConfig.from_json(dit_folder(config.model_path) / "config.json")


def model_id(config: TrainConfig) -> str:
    """Names the base model in the cache fingerprint and checkpoints."""
    return "builtin" if config.builtin else str(config.model_path.resolve())


def check_model_path(config: TrainConfig) -> None:
    """Refuses a checkpoint folder that is missing or lacks a part, and a `quantize` mode the devices cannot run,
    before any work. A missing folder is named as the config's 'model_path' (train has no --model-path flag)."""
    if not config.builtin:
        check_checkpoint(config.model_path, setting="set 'model_path' in the config to a LongCat-Video download (or to "
                                                    "null for the built-in tiny model)")
    check_quantize_supported(config.quantize)


def prepare_base_dit(dit: LongCatDiT, config: TrainConfig) -> LongCatDiT:
    """A given base DiT made what the config trains: its block Linears quantized as `quantize` says, BSA set (with
    the backward kernels `bsa.backward` names; `kernels.bsa_attention` runs them interpreted under pallas_interpret)."""
    quantize_linears(dit, config.quantize)
    dit.set_bsa(config.bsa, backend=config.bsa_backend, kernel_config=KernelConfig(backward=config.bsa_backward))
    return dit


def load_base_dit(config: TrainConfig) -> LongCatDiT:
    """The DiT to adapt, weights in `config.dtype` (they stay frozen) with the block Linears quantized as `quantize`
    says (a checkpoint's while loading, so its bf16 weights never reach the device), BSA as the config says."""
    dtype = DTYPES[config.dtype]
    if config.builtin:
        logger.warning("Training the built-in TINY model with RANDOM weights: it checks the set-up, it makes no "
                       "useful LoRA. Set 'model_path' to a LongCat-Video checkpoint.")
        return prepare_base_dit(random_dit(_presets().TINY_DIT_CONFIG, dtype=dtype), config)
    return prepare_base_dit(load_dit(dit_folder(config.model_path), dtype=dtype, quantize=config.quantize), config)


def load_encoders(config: TrainConfig) -> Encoders:
    """VAE, text encoder and tokenizer of the checkpoint (or the built-in ones), in `config.dtype`."""
    from longcat_jax.models.text_encoder.loading import load_text_encoder
    from longcat_jax.models.text_encoder.tokenizer import load_tokenizer
    from longcat_jax.models.vae import load_vae

    dtype = DTYPES[config.dtype]
    if config.builtin:
        models = _presets().build_tiny_models(dtype=dtype)
        return Encoders(models.vae, models.text_encoder, models.tokenizer)
    root = config.model_path
    return Encoders(
        vae=load_vae(root / VAE, dtype=dtype),
        text_encoder=load_text_encoder(root / TEXT_ENCODER, dtype=dtype),
        tokenizer=load_tokenizer(root / TOKENIZER),
    )
