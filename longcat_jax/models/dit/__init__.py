"""The LongCat video DiT in flax.nnx: config, model, name map from the original keys, loading and LoRA."""

from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import load_dit
from longcat_jax.models.dit.lora import LoRA, disable_loras, enable_loras, load_lora, merge_loras
from longcat_jax.models.dit.transformer import KVCache, LongCatDiT

__all__ = [
    "DiTConfig",
    "KVCache",
    "LoRA",
    "LongCatDiT",
    "disable_loras",
    "enable_loras",
    "load_dit",
    "load_lora",
    "merge_loras",
]
