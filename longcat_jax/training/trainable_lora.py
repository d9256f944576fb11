"""The LoRA being trained: float32 factors attached to the frozen DiT's Linears, split out as the only trainable state.

Each targeted Linear gets one run-time `LoRAAdapter` (the class inference uses, so the trained model computes what
`--lora` later computes) whose factors are stored in float32 whatever the base weights' dtype; the adapter casts
them to the Linear's compute dtype, so gradients reach the float32 factors through that cast. A quantized base
(`QuantizedLinear`, FP8 or INT8 weights) takes the same adapter: its frozen weights get no gradient and pass the
input's gradient straight through (`models.dit.quantized_linear`), so the factors train as on a bf16 base.

Initialisation is the original's `LoRAModule`: `lora_down` Kaiming-uniform (a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))),
`lora_up` zero, so training starts from the base model exactly. The update is scaled by alpha / rank.

`split_trainable` separates the factors (`LoRAWeight` variables) from everything else (the frozen base weights
and the LoRA scales), so gradients and the optimiser see only the factors.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from longcat_jax.errors import ConfigError
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.layers import Linear, LoRAAdapter, LoRAWeight
from longcat_jax.models.dit.lora import LoRA, LoRAFactors
from longcat_jax.models.dit.params import ModulePath, module_path
from longcat_jax.models.dit.quantized_linear import QuantizedLinear
from longcat_jax.sharding.spatial import to_host
from longcat_jax.training.config import LoRAConfig


@dataclasses.dataclass(frozen=True)
class LoRATarget:
    """One adapted Linear: our module path and the original's module name (what LoRA files are keyed by)."""

    path: ModulePath
    original_name: str


def lora_targets(config: DiTConfig, modules: tuple[str, ...]) -> list[LoRATarget]:
    """Every block's `modules` (original names inside a block, e.g. 'attn.qkv'), in block order."""
    targets = []
    for block in range(config.depth):
        for name in modules:
            original = f"blocks.{block}.{name}"
            mapped = module_path(original)
            if mapped is None or mapped[1] != "linear":
                raise ConfigError(f"LoRA target {name!r} is not a Linear of a LongCat DiT block")
            targets.append(LoRATarget(mapped[0], original))
    return targets


def linear_at(model: nnx.Module, path: ModulePath) -> Linear | QuantizedLinear:
    """The Linear (plain or quantized) at a module path of the DiT."""
    module = model
    for part in path:
        module = module[part] if isinstance(part, int) else getattr(module, part)
    if not isinstance(module, Linear | QuantizedLinear):
        raise ConfigError(f"{'.'.join(map(str, path))} is not a Linear of this DiT")
    return module


def initial_factors(in_features: int, out_features: int, rank: int, rng: np.random.Generator):
    """(down [in, rank], up [rank, out]) float32 as the original initialises them: Kaiming-uniform and zeros."""
    bound = 1.0 / np.sqrt(in_features)
    down = rng.uniform(-bound, bound, (in_features, rank)).astype(np.float32)
    return down, np.zeros((rank, out_features), np.float32)


def attach_trainable_lora(model: nnx.Module, lora: LoRAConfig, *, seed: int) -> list[LoRATarget]:
    """Adds a freshly initialised float32 LoRA to every target Linear of `model`; returns the targets.

    Refuses a model that already has run-time LoRAs attached (merge them into the weights first). Quantized Linears
    are prepared for training (`QuantizedLinear.prepare_for_lora_training`).
    """
    targets = lora_targets(model.config, lora.modules)
    rng = np.random.default_rng(seed)
    for target in targets:
        linear = linear_at(model, target.path)
        if len(linear.loras):
            raise ConfigError(f"{target.original_name} already carries a LoRA; merge it into the base weights "
                              "(merge_loras) before training another")
        down, up = initial_factors(linear.in_features, linear.out_features, lora.rank, rng)
        adapter = LoRAAdapter(down, up, lora.alpha / lora.rank, dtype=linear.dtype, param_dtype=jnp.float32)
        linear.loras = nnx.List([adapter])
        if isinstance(linear, QuantizedLinear):
            linear.prepare_for_lora_training()
    return targets


def split_trainable(model: nnx.Module):
    """(graphdef, factors, frozen): the LoRA factors (`LoRAWeight`) apart from every other variable."""
    return nnx.split(model, LoRAWeight, ...)


def trained_lora(model: nnx.Module, targets: list[LoRATarget], lora: LoRAConfig, name: str) -> LoRA:
    """The model's current LoRA as a `LoRA` (numpy float32 factors), as `load_lora` returns one."""
    modules = {}
    for target in targets:
        adapter = linear_at(model, target.path).loras[0]
        modules[target.path] = LoRAFactors(
            down=to_host(adapter.down_kernel.get_value()).astype(np.float32),
            up=to_host(adapter.up_kernel.get_value()).astype(np.float32),
            alpha_scale=lora.alpha / lora.rank,
        )
    return LoRA(name, modules)
