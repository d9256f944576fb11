"""Original LongCat DiT checkpoint names and layouts -> our `LongCatDiT` parameter paths and layouts.

One generator serves loading straight from the original safetensors and `python -m convert`. It
checks the whole checkpoint header first (every name mapped, every shape right, nothing missing)
so a bad checkpoint fails before any tensor is read or written, then yields one tensor at a time in
the checkpoint's name order (each block's tensors together). `original_tensors` lists what an original
checkpoint of a config holds; FastVideo's layout of the same tensors is mapped in `fastvideo_params`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
from collections.abc import Iterator, Mapping

import numpy as np
from flax import nnx

from longcat_jax.checkpoint.param_tree import ParamPath, abstract_model, path_str
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.transformer import LongCatDiT

ModulePath = tuple[str | int, ...]

# Original module names (without the block prefix) inside one block -> our module path there.
_BLOCK_MODULES: dict[str, tuple[ModulePath, str]] = {
    "adaLN_modulation.1": (("adaln",), "linear"),
    "attn.qkv": (("attn", "qkv"), "linear"),
    "attn.proj": (("attn", "proj"), "linear"),
    "attn.q_norm": (("attn", "q_norm"), "norm"),
    "attn.k_norm": (("attn", "k_norm"), "norm"),
    "pre_crs_attn_norm": (("cross_norm",), "norm"),
    "cross_attn.q_linear": (("cross_attn", "q"), "linear"),
    "cross_attn.kv_linear": (("cross_attn", "kv"), "linear"),
    "cross_attn.proj": (("cross_attn", "proj"), "linear"),
    "cross_attn.q_norm": (("cross_attn", "q_norm"), "norm"),
    "cross_attn.k_norm": (("cross_attn", "k_norm"), "norm"),
    "ffn.w1": (("ffn", "w1"), "linear"),
    "ffn.w2": (("ffn", "w2"), "linear"),
    "ffn.w3": (("ffn", "w3"), "linear"),
}
_TOP_MODULES: dict[str, tuple[ModulePath, str]] = {
    "x_embedder.proj": (("patch_embed",), "conv"),
    "t_embedder.mlp.0": (("timestep_embed", "linear_in"), "linear"),
    "t_embedder.mlp.2": (("timestep_embed", "linear_out"), "linear"),
    "y_embedder.y_proj.0": (("caption_embed", "linear_in"), "linear"),
    "y_embedder.y_proj.2": (("caption_embed", "linear_out"), "linear"),
    "final_layer.adaLN_modulation.1": (("final_layer", "adaln"), "linear"),
    "final_layer.linear": (("final_layer", "linear"), "linear"),
}
_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(.+)")

Axes = tuple[int, ...] | None  # the axis order taking an original tensor's layout to ours; None keeps it

# Per module kind: original parameter name -> (our parameter name, axis order).
_PARAMS: dict[str, dict[str, tuple[str, Axes]]] = {
    "linear": {"weight": ("kernel", (1, 0)), "bias": ("bias", None)},  # torch [out, in] -> [in, out]
    "conv": {"weight": ("kernel", (2, 3, 4, 1, 0)), "bias": ("bias", None)},  # [O, I, t, h, w] -> [t, h, w, I, O]
    "norm": {"weight": ("scale", None), "bias": ("bias", None)},
}


@dataclasses.dataclass(frozen=True)
class OriginalTensor:
    """One tensor of an original checkpoint for a given config: where it goes in our model, its shape there and in
    the original, and the axis order between the two (None: the same)."""

    path: ParamPath
    shape: tuple[int, ...]
    original_shape: tuple[int, ...]
    axes: Axes


def to_our_layout(array: np.ndarray, axes: Axes) -> np.ndarray:
    """An original tensor in our layout: a view of it (the placement or the consumer lays it out; see
    `checkpoint.param_tree.place`)."""
    return array if axes is None else array.transpose(axes)


def module_path(original_module: str) -> tuple[ModulePath, str] | None:
    """Our module path and kind ('linear', 'conv', 'norm') of an original module name, e.g.
    'blocks.3.attn.qkv' -> (('blocks', 3, 'attn', 'qkv'), 'linear'); None if the DiT has no such module."""
    if original_module in _TOP_MODULES:
        return _TOP_MODULES[original_module]
    match = _BLOCK_NAME.fullmatch(original_module)
    if match and match.group(2) in _BLOCK_MODULES:
        inner, kind = _BLOCK_MODULES[match.group(2)]
        return ("blocks", int(match.group(1)), *inner), kind
    return None


def _map_name(name: str) -> tuple[ParamPath, Axes] | None:
    module, _, param = name.rpartition(".")
    mapped = module_path(module)
    if mapped is None:
        return None
    path, kind = mapped
    if param not in _PARAMS[kind]:
        return None
    ours, axes = _PARAMS[kind][param]
    return (*path, ours), axes


def _our_shape(axes: Axes, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape an original tensor of `shape` has in our layout (a shape of the wrong rank is returned as is:
    it then fails the shape check instead of the transpose)."""
    return shape if axes is None or len(axes) != len(shape) else tuple(shape[a] for a in axes)


def _original_shape(axes: Axes, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape if axes is None else tuple(shape[axes.index(i)] for i in range(len(axes)))


@functools.lru_cache(maxsize=4)
def expected_parameters(config: DiTConfig) -> Mapping[ParamPath, tuple[int, ...]]:
    """Every parameter path of the DiT built from `config` with its shape (nothing allocated; read-only, kept for
    the next call: tracing the real-size model takes seconds)."""
    _, _, flat = abstract_model(lambda: LongCatDiT(config, rngs=nnx.Rngs(0)))
    return types.MappingProxyType({path: tuple(v.shape) for path, v in flat.items()})


@functools.lru_cache(maxsize=4)
def original_tensors(config: DiTConfig) -> Mapping[str, OriginalTensor]:
    """Every tensor an original `dit/` checkpoint of `config` holds, by its original name (nothing allocated;
    read-only, kept for the next call)."""
    expected = expected_parameters(config)
    modules = [*_TOP_MODULES, *(f"blocks.{i}.{inner}" for i in range(config.depth) for inner in _BLOCK_MODULES)]
    table = {}
    for module in modules:
        path, kind = module_path(module)
        for param, (ours, axes) in _PARAMS[kind].items():
            shape = expected.get((*path, ours))
            if shape is not None:
                table[f"{module}.{param}"] = OriginalTensor((*path, ours), shape, _original_shape(axes, shape), axes)
    return types.MappingProxyType(table)


def block_order_key(path: ParamPath) -> tuple[int, int]:
    """Sort key of a DiT parameter path: the layers outside the blocks first, then block 0, 1, 2, ... (the order
    GPTQ calibration reads a checkpoint in: each block's inputs are the previous block's outputs)."""
    return (1, int(path[1])) if path[0] == "blocks" else (0, 0)


def dit_tensors(ckpt: SafetensorsCheckpoint, config: DiTConfig, *,
                block_order: bool = False) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """(our path, array in our layout) for each tensor of an original `dit/` checkpoint, dtype kept; in the
    checkpoint's name order, or with `block_order` in `block_order_key`'s (the reads are random access either way).

    Raises CheckpointError, before yielding anything, on a name without a place in the model, two names for one
    place (`blocks.1.` and `blocks.01.`), a shape that does not fit `config`, a model parameter the checkpoint
    lacks, or a non-float dtype.
    """
    expected = expected_parameters(config)
    plan: list[tuple[str, ParamPath, Axes]] = []
    seen: dict[ParamPath, str] = {}  # our path -> the checkpoint's name for it
    for name in ckpt.names():
        mapped = _map_name(name)
        if mapped is None or mapped[0] not in expected:
            raise CheckpointError(
                f"{ckpt.path}: tensor {name!r} has no place in a LongCat DiT of depth {config.depth}; "
                "is this an original LongCat-Video dit/ checkpoint with its own config.json?"
            )
        path, axes = mapped
        shape = _our_shape(axes, ckpt.shape(name))
        if shape != expected[path]:
            raise CheckpointError(
                f"{ckpt.path}: tensor {name!r} has shape {ckpt.shape(name)} ({shape} in our layout) but the "
                f"model built from config.json needs {expected[path]} for {path_str(path)}; "
                "is config.json the one of these weights?"
            )
        if path in seen:
            raise CheckpointError(
                f"{ckpt.path}: tensors {seen[path]!r} and {name!r} are both {path_str(path)} (a block number written "
                "two ways); keep one of them"
            )
        seen[path] = name
        plan.append((name, path, axes))
    missing = sorted(path_str(p) for p in expected if p not in seen)
    if missing:
        raise CheckpointError(
            f"{ckpt.path}: {len(missing)} DiT parameter(s) missing from the checkpoint, e.g. {missing[:5]}; "
            "the download is incomplete or config.json does not belong to these weights"
        )
    ckpt.require_float(ckpt.names(), "the DiT")
    if block_order:
        plan.sort(key=lambda entry: block_order_key(entry[1]))
    for name, path, axes in plan:
        yield path, to_our_layout(ckpt.read(name), axes)
