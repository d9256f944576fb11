"""Whether a training step's rematerialisation mode can fit one GPU, checked before the DiT loads.

Counted per clip of the largest bucket (times the batch): every block's input, which each remat mode keeps through
the step (48 x tokens x hidden in the compute dtype, 31.0 GiB at 84,480 tokens for the bf16 13.6B DiT); with
"block_keep_attention" also each block's self attention output and softmax statistics (48 x tokens x 8,320
bytes); and the backward of one block, whose intermediates exist all at once. Beside them: the frozen weights
and the LoRA with its gradients and AdamW moments.

The one-block figure is measured, not derived: the temporaries XLA assigns (`compiled.memory_analysis()`, compiled
for an H100 by the CUDA plugin without a GPU) for the real-width DiT at 1, 2, 4 and 8 blocks, the per-block slope
(the kept input) taken off. With "block" it is 67 bytes per token and hidden channel (21.6 GiB at 84,480 tokens,
9.7 GiB at 37,440), the backward holding the qkv, rotated q/k, chunk-ordered q/k/v and SwiGLU activations of one
block at once; "block_and_sublayers" recomputes the self attention and the FFN inside a block's backward, so they
never overlap: 44 bytes by that compile (14.2 GiB at 84,480 tokens). The 720p BSA step under "block" was thus 25.3
GiB of weights + 54.4 GiB of temporaries (XLA on an H200 tried to allocate 54.47 GiB and failed); this check refuses
it before minutes of loading and compiling, and names the mode that needs less.

The whole 48-block step under "block_and_sublayers" then ran on an H200 (2026-12-03) and peaked above that count:
83.1 GiB with bf16 weights and 72.1 GiB with INT8 ones, against 79.4 and 67.4 GiB counted with 44 bytes. Its figure
is therefore the measured one, 59 bytes (the larger gap, 4.7 GiB at 84,480 tokens, added): 84.2 and 72.2 GiB.
Likewise "block": the whole 48-block step on an INT8 base peaked at 76.2 GiB on an H200 (2026-12-03) against 74.8 GiB
counted with 67 bytes, so it counts 72 (76.4 GiB; 88.5 GiB with bf16 weights, which XLA failed to fit as above).
"block_keep_attention" keeps 67: at 480p its count is within 0.3 GiB above the measured 71.4 GiB peak.

An FP8-compute base ("quantize": "fp8") runs its LoRA'd Linears over token chunks whose backward keeps more: one
block's temporaries at 84,480 tokens were 23.65 GiB against 14.83 GiB for bf16 weights in the same compile-only
measurement (`longcat_jax.models.dit.quantized_linear`), 27 bytes per token and channel more, added to every mode's
figure for such a base (not measured on a GPU). "fp8-weight-only" (the same e4m3 weights, bf16 GEMMs) and "int8"
join the LoRAs to their GEMMs and count as bf16.
"""

from __future__ import annotations

import jax.numpy as jnp

from longcat_jax.errors import ConfigError
from longcat_jax.memory.device import DeviceMemory
from longcat_jax.memory.footprint import block_linears, dit_weights
from longcat_jax.memory.sizes import format_size
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.params import module_path
from longcat_jax.quantization.modes import FP8_COMPUTE, scheme_for
from longcat_jax.training.config import TrainConfig
from longcat_jax.training.shapes import token_grid

KEEP_ATTENTION = "block_keep_attention"
F32 = 4
LORA_STATE_COPIES = 4  # the float32 factors, their gradients, AdamW's two moments
# One block's backward working set in bytes per token and hidden channel with 2-byte activations (see the module
# docstring: from XLA's buffer assignment for an H100; "block" and "block_and_sublayers" from the H200's measured
# peaks); "none" keeps every block's intermediates and is not checked.
BLOCK_BACKWARD_BYTES = {"block": 72, KEEP_ATTENTION: 67, "block_and_sublayers": 59}
# What an FP8-compute base adds to it (module docstring: compile-only, one block at 84,480 tokens).
FP8_COMPUTE_BACKWARD_BYTES = 27
# What to try instead of each mode where it does not fit.
LESS_MEMORY = {
    KEEP_ATTENTION: "set \"remat\": \"block\" (the attention is recomputed instead)",
    "block": "set \"remat\": \"block_and_sublayers\" (the self attention and FFN are recomputed once more)",
    "block_and_sublayers": "train at a smaller size, quantize the frozen base (\"quantize\": \"int8\" or "
                           "\"fp8-weight-only\"), or split the weights over several GPUs (\"parallel\": {\"fsdp\": true})",
}


def kept_attention_bytes(config: DiTConfig, tokens: int, act_bytes: int = 2) -> int:
    """What `block_keep_attention` keeps for one clip of `tokens` tokens: per block the self attention's output
    [tokens, hidden] in the compute dtype and its statistics [heads, tokens] in float32."""
    return config.depth * tokens * (config.hidden_size * act_bytes + config.num_heads * F32)


def kept_block_input_bytes(config: DiTConfig, tokens: int, act_bytes: int = 2) -> int:
    """What every remat mode keeps for one clip of `tokens` tokens: each block's input [tokens, hidden]."""
    return config.depth * tokens * config.hidden_size * act_bytes


def block_backward_bytes(config: DiTConfig, tokens: int, mode: str, act_bytes: int = 2,
                         quantize: str = "none") -> int:
    """One block's backward working set under `mode` for one clip of `tokens` tokens, the frozen base quantized
    with `quantize` (measured; module docstring)."""
    per_channel = BLOCK_BACKWARD_BYTES[mode]
    scheme = scheme_for(quantize)
    if scheme is not None and scheme.compute == FP8_COMPUTE:
        per_channel += FP8_COMPUTE_BACKWARD_BYTES
    return per_channel * tokens * config.hidden_size * act_bytes // 2


def remat_bytes(config: DiTConfig, tokens: int, mode: str, act_bytes: int = 2, quantize: str = "none") -> int:
    """What the step holds for one clip besides the weights and the LoRA's state under `mode` (not "none")."""
    kept = kept_block_input_bytes(config, tokens, act_bytes)
    if mode == KEEP_ATTENTION:
        kept += kept_attention_bytes(config, tokens, act_bytes)
    return kept + block_backward_bytes(config, tokens, mode, act_bytes, quantize)


def lora_state_bytes(config: DiTConfig, modules: tuple[str, ...], rank: int) -> int:
    """The LoRA's float32 factors on `modules` of every block, with their gradients and AdamW moments."""
    shapes = block_linears(config)
    per_block = 0
    for name in modules:
        path = module_path(f"blocks.0.{name}")[0][2:]  # the Linear's path inside a block
        in_features, out_features, _ = shapes[path]
        per_block += rank * (in_features + out_features)
    return config.depth * per_block * F32 * LORA_STATE_COPIES


def check_remat_fits(config: TrainConfig, dit_config: DiTConfig, max_tokens: int, memory: DeviceMemory,
                     devices: int = 1) -> None:
    """Refuses a remat mode whose step (module docstring) exceeds the memory one device may allocate. It keeps
    nothing on the CPU (XLA's attention there differs), with several devices the weights and batch are shared out
    by rules this check does not model, and "none" is not estimated: those pass unchecked."""
    training = config.training
    mode = training.remat
    if mode not in BLOCK_BACKWARD_BYTES or memory.platform != "gpu" or devices != 1:
        return
    dtype = jnp.dtype(config.dtype)
    weights = dit_weights(dit_config, dtype=dtype, quantize=config.quantize).total
    lora = lora_state_bytes(dit_config, config.lora.modules, config.lora.rank)
    activations = training.batch_size * remat_bytes(dit_config, max_tokens, mode, dtype.itemsize, config.quantize)
    need = weights + lora + activations
    if need > memory.bytes:
        raise ConfigError(
            f"'training.remat' \"{mode}\" needs about {format_size(activations)} of activations for {max_tokens:,} "
            f"tokens x batch {training.batch_size} (each block's input, "
            + ("each block's self attention, " if mode == KEEP_ATTENTION else "")
            + f"one block's backward); with the frozen weights ({format_size(weights)}) and the LoRA's state "
            f"({format_size(lora)}) that is {format_size(need)}, more than the {format_size(memory.bytes)} this GPU "
            f"may allocate ({memory.description}). {LESS_MEMORY[mode][0].upper()}{LESS_MEMORY[mode][1:]}"
        )


def max_clip_tokens(latent_shapes) -> int:
    """The DiT tokens of the largest latent (T, h, w) of the data."""
    return max(t * h * w for t, h, w in (token_grid(shape) for shape in latent_shapes))
