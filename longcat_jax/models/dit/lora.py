"""LoRA for the DiT in the original LongCat file format: applied at run time or merged into the weights.

    lora = load_lora("lora/cfg_step_lora.safetensors", multiplier=1.0)
    enable_loras(model, [lora, other])   # run time: y = W x + sum_i m_i * alpha_i * up_i(down_i(x))
    disable_loras(model)                 # back to the plain weights
    merge_loras(model, [lora])           # W += m * alpha * up @ down, once; no run-time cost

`load_lora` reads an original `.safetensors` file or a LoRA folder written by `python -m convert`; `random_lora`
makes one with random factors (the built-in model's stand-ins for the released LoRAs, and the benchmarks').
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from longcat_jax.checkpoint.orbax_chunks import is_converted, iter_part
from longcat_jax.checkpoint.param_tree import path_str
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError, InputError
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.fastvideo_lora_params import dit_lora_tensors
from longcat_jax.models.dit.layers import Linear, LoRAAdapter
from longcat_jax.models.dit.lora_params import ALPHA, DOWN, UP
from longcat_jax.models.dit.params import ModulePath, expected_parameters
from longcat_jax.models.dit.quantized_linear import QuantizedLinear


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
    """Reads a LoRA from an original LongCat `.safetensors` file, FastVideo's form of one (`lora_A`, `lora_B`,
    `lora_alpha` per module: `fastvideo_lora_params`) or our converted folder."""
    path = Path(path)
    if path.is_dir() and not is_converted(path):
        files = sorted(p.name for p in path.glob("*.safetensors"))
        if len(files) > 1:  # the original's lora/ folder holds one file per LoRA, not shards of one
            raise CheckpointError(f"{path} holds several LoRA files {files}; pass the path of one of them")
    tensors = iter_part(path) if path.is_dir() and is_converted(path) else dit_lora_tensors(SafetensorsCheckpoint(path))
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


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """`PATH[:MULTIPLIER]` (as `--lora` takes it) -> (path, multiplier); refuses a missing file and a multiplier
    that is not a finite number (nan or inf make every weight the LoRA touches NaN: a black video).

    A last `:` part that is not a number is refused as a multiplier, unless it belongs to the path: a file of that
    whole name exists, or the part holds a `/` (a colon in a folder's name)."""
    path, multiplier = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            multiplier = float(tail)
            path = head
        except ValueError:
            if not (Path(spec).exists() or "/" in tail):
                raise InputError(f"--lora {spec}: the multiplier {tail!r} is not a number; write PATH:MULTIPLIER, "
                                 f"e.g. {head}:0.8") from None
    if not math.isfinite(multiplier):
        raise InputError(f"LoRA multiplier {tail} in --lora {spec} is not a finite number; give one such as 0.8")
    if not Path(path).exists():
        raise InputError(f"LoRA {path} not found; --lora takes PATH[:MULTIPLIER], e.g. my_lora.safetensors:0.8")
    return Path(path), multiplier


def random_lora(config: DiTConfig, name: str, *, seed: int, rank: int = 4, strength: float = 0.1) -> LoRA:
    """A LoRA on every Linear of the DiT's blocks with random factors, standing in for a released LoRA file.

    The update of each Linear is about `strength` times the size of its random weight, enough to change the
    output visibly (tests can tell it is applied) without destroying it.
    """
    rng = np.random.default_rng(seed)
    modules = {}
    for path, shape in expected_parameters(config).items():
        if path[0] != "blocks" or path[-1] != "kernel" or len(shape) != 2:
            continue
        in_features, out_features = shape
        down = rng.standard_normal((in_features, rank)).astype(np.float32) / np.sqrt(in_features)
        up = rng.standard_normal((rank, out_features)).astype(np.float32) * strength / np.sqrt(rank)
        modules[tuple(path[:-1])] = LoRAFactors(down=down, up=up, alpha_scale=1.0)
    return LoRA(name, modules)


def _linear_at(model: nnx.Module, module_path: ModulePath, lora: LoRA) -> Linear | QuantizedLinear:
    target = model
    try:
        for part in module_path:
            target = target[part] if isinstance(part, int) else getattr(target, part)
    except (AttributeError, IndexError, TypeError) as e:
        raise CheckpointError(f"LoRA {lora.name!r} targets {path_str(module_path)}, which this DiT lacks") from e
    if not isinstance(target, Linear | QuantizedLinear):
        raise CheckpointError(f"LoRA {lora.name!r} targets {path_str(module_path)}, which is not a Linear")
    return target


def _checked(linear: Linear | QuantizedLinear, factors: LoRAFactors, module_path: ModulePath, lora: LoRA) -> LoRAFactors:
    if factors.down.shape[0] != linear.in_features or factors.up.shape[1] != linear.out_features:
        raise CheckpointError(
            f"LoRA {lora.name!r} for {path_str(module_path)} maps {factors.down.shape[0]} -> {factors.up.shape[1]} "
            f"features; the Linear maps {linear.in_features} -> {linear.out_features}"
        )
    return factors


def disable_loras(model: nnx.Module) -> None:
    """Removes every run-time LoRA from the model's Linears."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Linear | QuantizedLinear) and len(module.loras):
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
                                  dtype=linear.dtype, param_dtype=linear.lora_dtype)
            linear.loras = nnx.List([*linear.loras, adapter])


def merge_loras(model: nnx.Module, loras: Sequence[LoRA]) -> None:
    """Adds each LoRA's update into the weights in place: kernel += multiplier * alpha_scale * down @ up.

    The sum is formed in float32 and rounded once to the weight dtype; a quantized Linear re-quantizes the
    merged weight (merge into the bf16 weights before quantizing to avoid that second rounding).
    """
    for lora in loras:
        for module_path, factors in lora.modules.items():
            linear = _linear_at(model, module_path, lora)
            factors = _checked(linear, factors, module_path, lora)
            delta = jnp.asarray(factors.down, jnp.float32) @ jnp.asarray(factors.up, jnp.float32)
            linear.add_to_kernel(lora.multiplier * factors.alpha_scale * delta)
