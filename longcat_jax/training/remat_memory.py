"""Whether `training.remat = "block_keep_attention"` can fit, checked before the DiT loads.

That mode keeps, per block, the self attention's output and softmax statistics through the step (`remat`), 48 x
tokens x 8,320 bytes for the 13.6B DiT in bf16: 31.4 GiB at 84,480 tokens (720p spatial), more than an 80 GB GPU
holds beside the frozen weights and the LoRA's state. Without this check such a run would fail inside XLA's
allocation after minutes of loading and compiling. The figure counted here is a lower bound (the frozen weights,
the LoRA with its gradients and AdamW moments, the kept tensors; no activation), so a run refused here cannot fit,
and one let through may still be too large.
"""

from __future__ import annotations

import jax.numpy as jnp

from longcat_jax.errors import ConfigError
from longcat_jax.memory.device import DeviceMemory
from longcat_jax.memory.footprint import block_linears, dit_weights
from longcat_jax.memory.sizes import format_size
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.params import module_path
from longcat_jax.training.config import TrainConfig
from longcat_jax.training.shapes import token_grid

KEEP_ATTENTION = "block_keep_attention"
F32 = 4
LORA_STATE_COPIES = 4  # the float32 factors, their gradients, AdamW's two moments


def kept_attention_bytes(config: DiTConfig, tokens: int, act_bytes: int = 2) -> int:
    """What `block_keep_attention` keeps for one clip of `tokens` tokens: per block the self attention's output
    [tokens, hidden] in the compute dtype and its statistics [heads, tokens] in float32."""
    return config.depth * tokens * (config.hidden_size * act_bytes + config.num_heads * F32)


def lora_state_bytes(config: DiTConfig, modules: tuple[str, ...], rank: int) -> int:
    """The LoRA's float32 factors on `modules` of every block, with their gradients and AdamW moments."""
    shapes = block_linears(config)
    per_block = 0
    for name in modules:
        path = module_path(f"blocks.0.{name}")[0][2:]  # the Linear's path inside a block
        in_features, out_features, _ = shapes[path]
        per_block += rank * (in_features + out_features)
    return config.depth * per_block * F32 * LORA_STATE_COPIES


def check_keep_attention_fits(config: TrainConfig, dit_config: DiTConfig, max_tokens: int, memory: DeviceMemory,
                              devices: int = 1) -> None:
    """Refuses "block_keep_attention" where its kept tensors, the frozen weights and the LoRA's state alone exceed
    the memory one device may allocate. It keeps nothing on the CPU (XLA's attention), and with several devices
    the weights and batch are shared out by rules this check does not model: both pass unchecked."""
    training = config.training
    if training.remat != KEEP_ATTENTION or memory.platform != "gpu" or devices != 1:
        return
    dtype = jnp.dtype(config.dtype)
    weights = dit_weights(dit_config, dtype=dtype, quantize=config.quantize).total
    lora = lora_state_bytes(dit_config, config.lora.modules, config.lora.rank)
    kept = training.batch_size * kept_attention_bytes(dit_config, max_tokens, dtype.itemsize)
    need = weights + lora + kept
    if need > memory.bytes:
        raise ConfigError(
            f"'training.remat' \"{KEEP_ATTENTION}\" keeps every block's self attention: {format_size(kept)} for "
            f"{max_tokens:,} tokens x batch {training.batch_size}; with the frozen weights ({format_size(weights)}) "
            f"and the LoRA's state ({format_size(lora)}) that is {format_size(need)} before any activation, more "
            f"than the {format_size(memory.bytes)} this GPU may allocate ({memory.description}). Set \"remat\": "
            "\"block\" (the attention is recomputed instead), or train at a smaller size"
        )


def max_clip_tokens(latent_shapes) -> int:
    """The DiT tokens of the largest latent (T, h, w) of the data."""
    return max(t * h * w for t, h, w in (token_grid(shape) for shape in latent_shapes))
