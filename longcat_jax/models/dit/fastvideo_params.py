"""FastVideo's names and layout of the LongCat DiT -> our `LongCatDiT` parameter paths and layouts.

FastVideo converts the original checkpoint (its `scripts/checkpoint_conversion/longcat_to_fastvideo.py`) into
`transformer/`: the same tensors, in the same torch layouts and dtypes, under other names, with the fused
Linears split along their outputs. Self attention's `attn.qkv` becomes `self_attn.to_q`, `to_k`, `to_v` (equal
thirds, in that order) and cross attention's `kv_linear` becomes `cross_attn.to_k`, `to_v` (halves); the
embedders become `patch_embed`, `time_embedder.linear_1/2` and `caption_embedder.linear_1/2`; the adaLN Linears
`adaln_linear_1` (blocks) and `final_layer.adaln_linear`; the output Linears `to_out` and `final_layer.proj`;
`pre_crs_attn_norm` becomes `norm_cross`. The norms without parameters have no tensors in either layout.

Loading concatenates the split parts back into the original fused tensor (bit for bit what the original
checkpoint holds), then applies the original's layout change (`params.original_tensors`), so a FastVideo folder
gives the same model as the original one. The checks are the original path's: every FastVideo tensor name must
have its place (an unknown one is refused by name), every expected one must be there (a missing one is refused
by its FastVideo name), every shape must fit the config, every dtype must be a float, before anything is read.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
from collections.abc import Iterator, Mapping

import numpy as np

from longcat_jax.checkpoint.param_tree import ParamPath
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.params import OriginalTensor, block_order_key, dit_tensors, original_tensors, to_our_layout

# Original module name inside one block -> FastVideo's module name(s) there; several: the original's fused
# Linear split along its outputs into equal parts, in this order.
BLOCK_MODULES: dict[str, tuple[str, ...]] = {
    "adaLN_modulation.1": ("adaln_linear_1",),
    "attn.qkv": ("self_attn.to_q", "self_attn.to_k", "self_attn.to_v"),
    "attn.proj": ("self_attn.to_out",),
    "attn.q_norm": ("self_attn.q_norm",),
    "attn.k_norm": ("self_attn.k_norm",),
    "pre_crs_attn_norm": ("norm_cross",),
    "cross_attn.q_linear": ("cross_attn.to_q",),
    "cross_attn.kv_linear": ("cross_attn.to_k", "cross_attn.to_v"),
    "cross_attn.proj": ("cross_attn.to_out",),
    "cross_attn.q_norm": ("cross_attn.q_norm",),
    "cross_attn.k_norm": ("cross_attn.k_norm",),
    "ffn.w1": ("ffn.w1",),
    "ffn.w2": ("ffn.w2",),
    "ffn.w3": ("ffn.w3",),
}
TOP_MODULES: dict[str, tuple[str, ...]] = {
    "x_embedder.proj": ("patch_embed.proj",),
    "t_embedder.mlp.0": ("time_embedder.linear_1",),
    "t_embedder.mlp.2": ("time_embedder.linear_2",),
    "y_embedder.y_proj.0": ("caption_embedder.linear_1",),
    "y_embedder.y_proj.2": ("caption_embedder.linear_2",),
    "final_layer.adaLN_modulation.1": ("final_layer.adaln_linear",),
    "final_layer.linear": ("final_layer.proj",),
}
_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(.+)")


def _inverse(modules: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, int, int]]:
    return {theirs: (original, part, len(split)) for original, split in modules.items()
            for part, theirs in enumerate(split)}


_BLOCK_ORIGINALS, _TOP_ORIGINALS = _inverse(BLOCK_MODULES), _inverse(TOP_MODULES)


def fastvideo_modules(original_module: str) -> tuple[str, ...] | None:
    """FastVideo's module name(s) of an original module, e.g. 'blocks.3.attn.qkv' -> ('blocks.3.self_attn.to_q',
    'blocks.3.self_attn.to_k', 'blocks.3.self_attn.to_v'); None if the original has no such module."""
    if original_module in TOP_MODULES:
        return TOP_MODULES[original_module]
    match = _BLOCK_NAME.fullmatch(original_module)
    if match and match.group(2) in BLOCK_MODULES:
        return tuple(f"blocks.{match.group(1)}.{inner}" for inner in BLOCK_MODULES[match.group(2)])
    return None


def original_module(fastvideo_module: str) -> tuple[str, int, int] | None:
    """(original module, part, parts) of a FastVideo module name, e.g. 'blocks.3.self_attn.to_k' ->
    ('blocks.3.attn.qkv', 1, 3); None if FastVideo's LongCat DiT has no such module."""
    if fastvideo_module in _TOP_ORIGINALS:
        return _TOP_ORIGINALS[fastvideo_module]
    match = _BLOCK_NAME.fullmatch(fastvideo_module)
    if match and match.group(2) in _BLOCK_ORIGINALS:
        inner, part, parts = _BLOCK_ORIGINALS[match.group(2)]
        return f"blocks.{match.group(1)}.{inner}", part, parts
    return None


@dataclasses.dataclass(frozen=True)
class FastVideoTensor:
    """One tensor of a FastVideo checkpoint: the original tensor it is part `part` of `parts` of (split along the
    first, output axis), and its own shape."""

    original: str
    part: int
    parts: int
    shape: tuple[int, ...]


@functools.lru_cache(maxsize=4)
def fastvideo_tensors(config: DiTConfig) -> Mapping[str, FastVideoTensor]:
    """Every tensor FastVideo's conversion of an original checkpoint of `config` holds, by its name (read-only,
    kept for the next call)."""
    table = {}
    for name, tensor in original_tensors(config).items():
        module, _, param = name.rpartition(".")
        modules = fastvideo_modules(module)
        first, *rest = tensor.original_shape
        for part, fastvideo_module in enumerate(modules):
            table[f"{fastvideo_module}.{param}"] = FastVideoTensor(name, part, len(modules),
                                                                  (first // len(modules), *rest))
    return types.MappingProxyType(table)


def _listing(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def fastvideo_dit_tensors(ckpt: SafetensorsCheckpoint, config: DiTConfig, *,
                          block_order: bool = False) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """(our path, array in our layout) for each parameter of a FastVideo `transformer/` checkpoint, dtype kept;
    split parts are read together and joined. `block_order`: in `params.block_order_key`'s order.

    Raises CheckpointError, at the call (before anything is read), on a tensor name without a place in the DiT
    of `config`, an expected tensor the checkpoint lacks, a shape that does not fit, a non-float dtype, or the
    parts of one fused tensor stored in different dtypes; each message names the FastVideo tensor(s).
    """
    table = fastvideo_tensors(config)
    names = set(ckpt.names())
    unknown = sorted(names - table.keys())
    if unknown:
        raise CheckpointError(
            f"{ckpt.path}: {len(unknown)} tensor(s) have no place in a LongCat DiT of depth {config.depth} in "
            f"FastVideo's layout: {_listing(unknown)}; is this FastVideo's conversion of LongCat-Video "
            "(transformer/) with its own config.json?"
        )
    missing = sorted(table.keys() - names)
    if missing:
        raise CheckpointError(
            f"{ckpt.path}: {len(missing)} tensor(s) of FastVideo's layout missing from the checkpoint: "
            f"{_listing(missing)}; the download is incomplete or config.json does not belong to these weights"
        )
    for name in sorted(names):
        if ckpt.shape(name) != table[name].shape:
            raise CheckpointError(
                f"{ckpt.path}: tensor {name!r} has shape {ckpt.shape(name)} but the model built from config.json "
                f"needs {table[name].shape}; is config.json the one of these weights?"
            )
    ckpt.require_float(sorted(names), "the DiT")
    groups: dict[str, list[str]] = {}
    for name in sorted(names, key=lambda n: table[n].part):
        groups.setdefault(table[name].original, []).append(name)
    for parts in groups.values():
        if len({ckpt.dtype(n) for n in parts}) > 1:
            raise CheckpointError(
                f"{ckpt.path}: tensors {parts} are parts of one fused weight but stored in different dtypes "
                f"{[ckpt.dtype(n).name for n in parts]}; the checkpoint is damaged, download it again"
            )
    expected = original_tensors(config)
    plan = [(expected[original], groups[original]) for original in sorted(groups)]
    if block_order:
        plan.sort(key=lambda entry: block_order_key(entry[0].path))
    return _joined(ckpt, plan)


def _joined(ckpt: SafetensorsCheckpoint,
            plan: list[tuple[OriginalTensor, list[str]]]) -> Iterator[tuple[ParamPath, np.ndarray]]:
    for tensor, parts in plan:
        arrays = [ckpt.read(name) for name in parts]
        joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        yield tensor.path, to_our_layout(joined, tensor.axes)


def uses_fastvideo_names(ckpt: SafetensorsCheckpoint, config: DiTConfig) -> bool:
    """True if more of the checkpoint's tensor names are FastVideo's than the original's (names both share, as
    `ffn.w1.weight`, count for neither)."""
    names = set(ckpt.names())
    ours, theirs = set(original_tensors(config)), set(fastvideo_tensors(config))
    return len(names & (theirs - ours)) > len(names & (ours - theirs))


def checkpoint_dit_tensors(ckpt: SafetensorsCheckpoint, config: DiTConfig, *,
                           block_order: bool = False) -> tuple[Iterator[tuple[ParamPath, np.ndarray]], int]:
    """The tensor stream of a DiT safetensors checkpoint in either naming (the original's `dit/` or FastVideo's
    `transformer/`, told apart by its names) and the number of tensors it yields; `block_order` as `dit_tensors`."""
    if uses_fastvideo_names(ckpt, config):
        return (fastvideo_dit_tensors(ckpt, config, block_order=block_order),
                len({t.original for t in fastvideo_tensors(config).values()}))
    return dit_tensors(ckpt, config, block_order=block_order), len(ckpt.names())
