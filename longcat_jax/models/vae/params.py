"""Original Wan 2.1 VAE checkpoint (diffusers `AutoencoderKLWan` names) -> our `WanVAE` parameter tree.

The name table is derived from the config with the same layer plan the model uses, so every
original tensor has exactly one place. Everything is checked from the safetensors headers before
the first tensor is read: an original key without a place, a parameter without a tensor, or a
shape that does not fit the config is a CheckpointError naming the original key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
from flax import nnx

from longcat_jax.checkpoint.param_tree import ParamPath, abstract_model, path_str
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.vae.autoencoder import WanVAE
from longcat_jax.models.vae.config import VAEConfig, decoder_plan, encoder_plan


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How one original tensor becomes ours: the array transform and the original shape it implies."""

    to_ours: Callable[[np.ndarray], np.ndarray]
    original_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


# torch Conv3d [O, I, D, H, W] -> Flax [D, H, W, I, O]
_CONV3D = _Layout(lambda a: a.transpose(2, 3, 4, 1, 0), lambda s: (s[4], s[3], s[0], s[1], s[2]))
# torch Conv2d [O, I, H, W] -> Flax [H, W, I, O]
_CONV2D = _Layout(lambda a: a.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1]))
# 1x1x1 Conv3d [O, I, 1, 1, 1] / 1x1 Conv2d [O, I, 1, 1] -> Linear [I, O]
_POINTWISE3D = _Layout(lambda a: a.reshape(a.shape[:2]).T, lambda s: (s[1], s[0], 1, 1, 1))
_POINTWISE2D = _Layout(lambda a: a.reshape(a.shape[:2]).T, lambda s: (s[1], s[0], 1, 1))
# RMS norm gamma [C, 1, 1, 1] (video) / [C, 1, 1] (image) -> scale [C]
_GAMMA3D = _Layout(lambda a: a.reshape(-1), lambda s: (s[0], 1, 1, 1))
_GAMMA2D = _Layout(lambda a: a.reshape(-1), lambda s: (s[0], 1, 1))
_AS_IS = _Layout(lambda a: a, lambda s: s)

_Table = dict[str, tuple[ParamPath, _Layout]]


def _conv(table: _Table, name: str, path: ParamPath, layout: _Layout = _CONV3D) -> None:
    table[f"{name}.weight"] = ((*path, "kernel"), layout)
    table[f"{name}.bias"] = ((*path, "bias"), _AS_IS)


def _residual(table: _Table, name: str, path: ParamPath, has_shortcut: bool) -> None:
    table[f"{name}.norm1.gamma"] = ((*path, "norm1", "scale"), _GAMMA3D)
    table[f"{name}.norm2.gamma"] = ((*path, "norm2", "scale"), _GAMMA3D)
    _conv(table, f"{name}.conv1", (*path, "conv1", "conv"))
    _conv(table, f"{name}.conv2", (*path, "conv2", "conv"))
    if has_shortcut:
        _conv(table, f"{name}.conv_shortcut", (*path, "shortcut"), _POINTWISE3D)


def _attention(table: _Table, name: str, path: ParamPath) -> None:
    table[f"{name}.norm.gamma"] = ((*path, "norm", "scale"), _GAMMA2D)
    _conv(table, f"{name}.to_qkv", (*path, "qkv"), _POINTWISE2D)
    _conv(table, f"{name}.proj", (*path, "proj"), _POINTWISE2D)


def _mid(table: _Table, name: str, path: ParamPath) -> None:
    _residual(table, f"{name}.resnets.0", (*path, "res_in"), False)
    _attention(table, f"{name}.attentions.0", (*path, "attention"))
    _residual(table, f"{name}.resnets.1", (*path, "res_out"), False)


def name_table(config: VAEConfig) -> _Table:
    """Every original tensor name of a checkpoint with this config -> (our parameter path, layout)."""
    table: _Table = {}
    _conv(table, "encoder.conv_in", ("encoder", "conv_in", "conv"))
    for i, spec in enumerate(encoder_plan(config)):
        name, path = f"encoder.down_blocks.{i}", ("encoder", "layers", i)
        if spec.kind == "res":
            _residual(table, name, path, spec.in_dim != spec.out_dim)
        elif spec.kind == "attn":
            _attention(table, name, path)
        else:
            _conv(table, f"{name}.resample.1", (*path, "spatial_conv"), _CONV2D)
            if spec.kind == "down3d":
                _conv(table, f"{name}.time_conv", (*path, "time_conv"))
    _mid(table, "encoder.mid_block", ("encoder", "mid"))
    table["encoder.norm_out.gamma"] = (("encoder", "norm_out", "scale"), _GAMMA3D)
    _conv(table, "encoder.conv_out", ("encoder", "conv_out", "conv"))
    _conv(table, "quant_conv", ("quant",), _POINTWISE3D)
    _conv(table, "post_quant_conv", ("post_quant",), _POINTWISE3D)
    _conv(table, "decoder.conv_in", ("decoder", "conv_in", "conv"))
    _mid(table, "decoder.mid_block", ("decoder", "mid"))
    for s, stage in enumerate(decoder_plan(config)):
        name, path = f"decoder.up_blocks.{s}", ("decoder", "stages", s)
        in_dim = stage.in_dim
        for r in range(stage.num_blocks):
            _residual(table, f"{name}.resnets.{r}", (*path, "blocks", r), in_dim != stage.out_dim)
            in_dim = stage.out_dim
        if stage.upsample is not None:
            up_name, up_path = f"{name}.upsamplers.0", (*path, "upsample")
            _conv(table, f"{up_name}.resample.1", (*up_path, "spatial_conv"), _CONV2D)
            if stage.upsample == "up3d":
                _conv(table, f"{up_name}.time_conv", (*up_path, "time_conv", "conv"))
    table["decoder.norm_out.gamma"] = (("decoder", "norm_out", "scale"), _GAMMA3D)
    _conv(table, "decoder.conv_out", ("decoder", "conv_out", "conv"))
    return table


def expected_shapes(config: VAEConfig) -> dict[ParamPath, tuple[int, ...]]:
    """Our parameter paths and shapes for this config (from an abstract model; allocates nothing)."""
    _, _, flat = abstract_model(lambda: WanVAE(config, rngs=nnx.Rngs(0)))
    return {path: tuple(value.shape) for path, value in flat.items()}


def vae_tensors(ckpt: SafetensorsCheckpoint, config: VAEConfig) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """Yields (our path, array in our layout) for every tensor of an original `vae/` checkpoint.

    All names, shapes and dtypes (float only) are validated before anything is read; arrays keep the
    checkpoint dtype.
    """
    table = name_table(config)
    shapes = expected_shapes(config)
    ours = {path for path, _ in table.values()}
    if ours != set(shapes):
        raise CheckpointError(
            f"internal VAE name table and model disagree: {sorted(map(path_str, ours ^ set(shapes)))[:5]}"
        )
    names = set(ckpt.names())
    unmapped = sorted(names - table.keys())
    if unmapped:
        raise CheckpointError(
            f"{ckpt.path}: {len(unmapped)} VAE tensor(s) have no place in AutoencoderKLWan with this "
            f"config.json, e.g. {unmapped[:5]}; is this a Wan 2.1 VAE with its own config.json?"
        )
    missing = sorted(table.keys() - names)
    if missing:
        raise CheckpointError(
            f"{ckpt.path}: {len(missing)} VAE tensor(s) missing, e.g. {missing[:5]}; the checkpoint is "
            "incomplete or belongs to a different config.json"
        )
    for name in sorted(names):
        path, layout = table[name]
        want = layout.original_shape(shapes[path])
        if tuple(ckpt.shape(name)) != want:
            raise CheckpointError(
                f"{ckpt.path}: VAE tensor {name} has shape {tuple(ckpt.shape(name))}, config.json needs "
                f"{want}; is config.json the one of these weights?"
            )
    ckpt.require_float(sorted(names), "the VAE")
    for name in sorted(names):
        path, layout = table[name]
        yield path, np.ascontiguousarray(layout.to_ours(ckpt.read(name)))
