"""Original LongCat DiT checkpoint names and layouts -> our `LongCatDiT` parameter paths and layouts.

One generator serves loading straight from the original safetensors and `python -m convert`. It
checks the whole checkpoint header first (every name mapped, every shape right, nothing missing)
so a bad checkpoint fails before any tensor is read or written, then yields one tensor at a time in
the checkpoint's name order (each block's tensors together).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

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

# Per module kind: original parameter name -> (our parameter name, layout change).
_LINEAR_T: Callable[[np.ndarray], np.ndarray] = lambda w: w.T  # torch [out, in] -> [in, out]
_CONV_T: Callable[[np.ndarray], np.ndarray] = lambda w: w.transpose(2, 3, 4, 1, 0)  # [O,I,t,h,w] -> [t,h,w,I,O]
_KEEP: Callable[[np.ndarray], np.ndarray] = lambda w: w
_PARAMS = {
    "linear": {"weight": ("kernel", _LINEAR_T), "bias": ("bias", _KEEP)},
    "conv": {"weight": ("kernel", _CONV_T), "bias": ("bias", _KEEP)},
    "norm": {"weight": ("scale", _KEEP), "bias": ("bias", _KEEP)},
}


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


def _map_name(name: str) -> tuple[ParamPath, Callable[[np.ndarray], np.ndarray]] | None:
    module, _, param = name.rpartition(".")
    mapped = module_path(module)
    if mapped is None:
        return None
    path, kind = mapped
    if param not in _PARAMS[kind]:
        return None
    ours, layout = _PARAMS[kind][param]
    return (*path, ours), layout


def _transformed_shape(layout, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(layout(np.empty(shape, dtype=np.uint8)).shape) if shape else ()


def expected_parameters(config: DiTConfig) -> dict[ParamPath, tuple[int, ...]]:
    """Every parameter path of the DiT built from `config` with its shape (nothing allocated)."""
    _, _, flat = abstract_model(lambda: LongCatDiT(config, rngs=nnx.Rngs(0)))
    return {path: tuple(v.shape) for path, v in flat.items()}


def dit_tensors(ckpt: SafetensorsCheckpoint, config: DiTConfig) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """(our path, array in our layout) for each tensor of an original `dit/` checkpoint, dtype kept.

    Raises CheckpointError, before yielding anything, on a name without a place in the model, a
    shape that does not fit `config`, a model parameter the checkpoint lacks, or a non-float dtype.
    """
    expected = expected_parameters(config)
    plan: list[tuple[str, ParamPath, Callable]] = []
    seen: set[ParamPath] = set()
    for name in ckpt.names():
        mapped = _map_name(name)
        if mapped is None or mapped[0] not in expected:
            raise CheckpointError(
                f"{ckpt.path}: tensor {name!r} has no place in a LongCat DiT of depth {config.depth}; "
                "is this an original LongCat-Video dit/ checkpoint with its own config.json?"
            )
        path, layout = mapped
        shape = _transformed_shape(layout, ckpt.shape(name))
        if shape != expected[path]:
            raise CheckpointError(
                f"{ckpt.path}: tensor {name!r} has shape {ckpt.shape(name)} ({shape} in our layout) but the "
                f"model built from config.json needs {expected[path]} for {path_str(path)}; "
                "is config.json the one of these weights?"
            )
        seen.add(path)
        plan.append((name, path, layout))
    missing = sorted(path_str(p) for p in expected if p not in seen)
    if missing:
        raise CheckpointError(
            f"{ckpt.path}: {len(missing)} DiT parameter(s) missing from the checkpoint, e.g. {missing[:5]}; "
            "the download is incomplete or config.json does not belong to these weights"
        )
    ckpt.require_float(ckpt.names(), "the DiT")
    for name, path, layout in plan:
        yield path, np.ascontiguousarray(layout(ckpt.read(name)))
