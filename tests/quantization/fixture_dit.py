"""The fixture DiT, loaded quantized the way the loaders do it, and its forward cases; shared by the quantization
tests and `quality_report`."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from kernels import BSAParams
from longcat_jax.checkpoint.param_tree import fill_model
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.layers import LoRAAdapter
from longcat_jax.models.dit.lora import LoRA
from longcat_jax.models.dit.params import dit_tensors
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.quantization import quantize_tensors

CASES = ("t2v", "i2v", "kvcache", "lora", "bsa")
# The `bsa` case's parameters (dit_cases.json).
FIXTURE_BSA = BSAParams(sparsity=0.75, cdf_threshold=None, chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4))
CALL_FLAGS = ("num_cond_latents", "return_kv", "skip_crs_attn")
forward = nnx.jit(lambda model, *args, **kwargs: model(*args, **kwargs), static_argnames=CALL_FLAGS)


def load_quantized_dit(fixtures: Path, mode, dtype=jnp.float32) -> LongCatDiT:
    """The fixture `dit/` through `quantize_tensors` into a quantized skeleton (the loader recipe, `load_dit`: the
    model built with `quantize`, so 'fp8-attention' also switches its attention to FP8)."""
    folder = Path(fixtures) / "dit"
    config = DiTConfig.from_json(folder / "config.json")
    tensors = quantize_tensors(dit_tensors(SafetensorsCheckpoint(folder), config), mode, source=str(folder))
    return fill_model(
        lambda: LongCatDiT(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype, quantize=mode),
        tensors, source=str(folder),
    )


def read_cases(fixtures: Path) -> dict[str, np.ndarray]:
    ckpt = SafetensorsCheckpoint(Path(fixtures) / "dit_cases.safetensors")
    return {name: ckpt.read(name) for name in ckpt.names()}


def t2v_args(cases) -> tuple:
    return tuple(jnp.asarray(cases[f"t2v.{n}"]) for n in ("hidden_states", "timestep", "encoder_hidden_states",
                                                           "encoder_attention_mask"))


def run_case(model: LongCatDiT, cases, name: str) -> np.ndarray:
    """The DiT output of fixture case `name` ('t2v', 'i2v', 'kvcache', 'bsa'; 'lora' is t2v with a LoRA attached)."""
    hidden, timestep, text, mask = t2v_args(cases)
    if name in ("t2v", "lora"):
        return np.asarray(forward(model, hidden, timestep, text, mask))
    if name == "i2v":
        return np.asarray(forward(model, hidden, jnp.asarray(cases["i2v.timestep"]), text, mask, num_cond_latents=1))
    if name == "kvcache":
        cond = jnp.asarray(cases["kvcache.cond_latents"])
        batch, frames = cond.shape[0], cond.shape[2]
        _, cache = forward(model, cond, jnp.zeros((batch, frames)), jnp.zeros_like(text), None, return_kv=True,
                           skip_crs_attn=True)
        return np.asarray(forward(model, jnp.asarray(cases["kvcache.hidden_states"]), jnp.asarray(cases["kvcache.timestep"]),
                                  text, mask, num_cond_latents=frames, kv_cache=cache))
    if name == "bsa":
        model.set_bsa(FIXTURE_BSA)
        try:
            return np.asarray(forward(model, jnp.asarray(cases["bsa.hidden_states"]), jnp.asarray([700.0]), text[:1],
                                      mask[:1]))
        finally:
            model.set_bsa(None)
    raise ValueError(f"unknown fixture case {name!r}")


def attach_lora(model: LongCatDiT, lora: LoRA) -> None:
    """Run-time LoRA on every Linear the LoRA names, factors in the Linear's `lora_dtype` (what `enable_loras`
    does once it reads `lora_dtype`; it still reads `kernel.dtype`, which a QuantizedLinear does not have)."""
    for module_path, factors in lora.modules.items():
        linear = model
        for part in module_path:
            linear = linear[part] if isinstance(part, int) else getattr(linear, part)
        adapter = LoRAAdapter(factors.down, factors.up, lora.multiplier * factors.alpha_scale, dtype=linear.dtype,
                              param_dtype=linear.lora_dtype)
        linear.loras = nnx.List([*linear.loras, adapter])
