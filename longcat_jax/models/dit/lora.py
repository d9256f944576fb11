"""LoRA for the DiT in the original LongCat file format: applied at run time or merged into the weights.

    lora = load_lora("lora/cfg_step_lora.safetensors", multiplier=1.0)
    enable_loras(model, [lora, other])   # run time: y = W x + sum_i m_i * alpha_i * up_i(down_i(x))
    disable_loras(model)                 # back to the plain weights
    merge_loras(model, [lora])           # W += m * alpha * up @ down, once; no run-time cost

`load_lora` reads an original `.safetensors` file or a LoRA folder written by `python -m convert`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert.checkpoint import is_converted, iter_part
from convert.dit import ModulePath
from convert.lora import ALPHA, DOWN, UP, lora_tensors
from convert.param_tree import path_str
from convert.safetensors_io import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.dit.layers import Linear, LoRAAdapter


@dataclasses.dataclass(frozen=True)
class LoRAFactors:
    """The update of one Linear: down [in, rank], up [rank, out] (our kernel layout), alpha_scale = alpha / rank."""

    down: np.ndarray
    up: np.ndarray
    alpha_scale: float


@dataclasses.dataclass(frozen=True)
class LoRA:
    """A LoRA (factors per Linear module path) and the multiplier it is applied with."""

    name: str
    modules: Mapping[ModulePath, LoRAFactors]
    multiplier: float = 1.0

    def with_multiplier(self, multiplier: float) -> LoRA:
        return dataclasses.replace(self, multiplier=float(multiplier))


def load_lora(path: str | Path, *, multiplier: float = 1.0, name: str | None = None) -> LoRA:
    """Reads a LoRA from an original LongCat `.safetensors` file or from our converted folder."""
    path = Path(path)
    if path.is_dir() and not is_converted(path):
        files = sorted(p.name for p in path.glob("*.safetensors"))
        if len(files) > 1:  # the original's lora/ folder holds one file per LoRA, not shards of one
            raise CheckpointError(f"{path} holds several LoRA files {files}; pass the path of one of them")
    tensors = iter_part(path) if path.is_dir() and is_converted(path) else lora_tensors(SafetensorsCheckpoint(path))
    parts: dict[ModulePath, dict[str, np.ndarray]] = {}
    for tensor_path, array in tensors:
        parts.setdefault(tuple(tensor_path[:-1]), {})[tensor_path[-1]] = np.asarray(array)
    modules = {}
    for module, factors in parts.items():
        if set(factors) != {DOWN, UP, ALPHA}:
            raise CheckpointError(f"{path}: LoRA for {path_str(module)} has {sorted(factors)}, needs {[DOWN, UP, ALPHA]}")
        modules[module] = LoRAFactors(factors[DOWN], factors[UP], float(factors[ALPHA]))
    if not modules:
        raise CheckpointError(f"{path} holds no LoRA factors")
    return LoRA(name or path.stem, modules, float(multiplier))


def _linear_at(model: nnx.Module, module_path: ModulePath, lora: LoRA) -> Linear:
    target = model
    try:
        for part in module_path:
            target = target[part] if isinstance(part, int) else getattr(target, part)
    except (AttributeError, IndexError, TypeError) as e:
        raise CheckpointError(f"LoRA {lora.name!r} targets {path_str(module_path)}, which this DiT lacks") from e
    if not isinstance(target, Linear):
        raise CheckpointError(f"LoRA {lora.name!r} targets {path_str(module_path)}, which is not a Linear")
    return target


def _checked(linear: Linear, factors: LoRAFactors, module_path: ModulePath, lora: LoRA) -> LoRAFactors:
    if factors.down.shape[0] != linear.in_features or factors.up.shape[1] != linear.out_features:
        raise CheckpointError(
            f"LoRA {lora.name!r} for {path_str(module_path)} maps {factors.down.shape[0]} -> {factors.up.shape[1]} "
            f"features; the Linear maps {linear.in_features} -> {linear.out_features}"
        )
    return factors


def disable_loras(model: nnx.Module) -> None:
    """Removes every run-time LoRA from the model's Linears."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Linear) and len(module.loras):
            module.loras = nnx.List([])


def enable_loras(model: nnx.Module, loras: Sequence[LoRA]) -> None:
    """Applies `loras` at run time (replacing any enabled before), each with its multiplier.

    The factors are kept in the model's weight dtype and computed in each Linear's dtype, as the
    original does; the next jit call retraces.
    """
    disable_loras(model)
    for lora in loras:
        for module_path, factors in lora.modules.items():
            linear = _linear_at(model, module_path, lora)
            factors = _checked(linear, factors, module_path, lora)
            adapter = LoRAAdapter(factors.down, factors.up, lora.multiplier * factors.alpha_scale,
                                  dtype=linear.dtype, param_dtype=linear.kernel.get_value().dtype)
            linear.loras = nnx.List([*linear.loras, adapter])


def merge_loras(model: nnx.Module, loras: Sequence[LoRA]) -> None:
    """Adds each LoRA's update into the weights in place: kernel += multiplier * alpha_scale * down @ up.

    The sum is formed in float32 and rounded once to the weight dtype.
    """
    for lora in loras:
        for module_path, factors in lora.modules.items():
            linear = _linear_at(model, module_path, lora)
            factors = _checked(linear, factors, module_path, lora)
            kernel = linear.kernel.get_value()
            delta = jnp.asarray(factors.down, jnp.float32) @ jnp.asarray(factors.up, jnp.float32)
            scale = lora.multiplier * factors.alpha_scale
            linear.kernel.set_value((kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype))
