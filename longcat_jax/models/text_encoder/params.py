"""Maps the original `text_encoder/` (transformers `UMT5EncoderModel`) tensors onto our UMT5 encoder.

Original name (per block i)                                   -> our parameter path
`shared.weight` [V, C]                                        -> token_embedding.embedding
`encoder.block.i.layer.0.layer_norm.weight`                   -> layers.i.attention_norm.scale
`encoder.block.i.layer.0.SelfAttention.{q,k,v,o}.weight`      -> layers.i.attention.{query,key,value,out}.kernel
                                                                 (transposed to [in, out])
`encoder.block.i.layer.0.SelfAttention.relative_attention_bias.weight` [buckets, H]
                                                              -> layers.i.attention.relative_bias.embedding
`encoder.block.i.layer.1.layer_norm.weight`                   -> layers.i.ffn_norm.scale
`encoder.block.i.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight` -> layers.i.ffn.{gate,up,down}.kernel (transposed)
`encoder.final_layer_norm.weight`                             -> final_norm.scale

Checkpoints saved with tied embeddings may also hold `encoder.embed_tokens.weight`, the same
matrix as `shared.weight`: it is used when `shared.weight` is absent and otherwise checked to be
the same tensor and skipped. Any other name, any missing tensor and any shape that does not fit
the config is a CheckpointError.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from longcat_jax.checkpoint.param_tree import ParamPath
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.text_encoder.config import UMT5Config

_EMBEDDING = "shared.weight"
_TIED_EMBEDDING = "encoder.embed_tokens.weight"
_BLOCK_KEY = re.compile(r"encoder\.block\.(\d+)\.(.+)")
_LINEARS = {
    "layer.0.SelfAttention.q.weight": ("attention", "query"),
    "layer.0.SelfAttention.k.weight": ("attention", "key"),
    "layer.0.SelfAttention.v.weight": ("attention", "value"),
    "layer.0.SelfAttention.o.weight": ("attention", "out"),
    "layer.1.DenseReluDense.wi_0.weight": ("ffn", "gate"),
    "layer.1.DenseReluDense.wi_1.weight": ("ffn", "up"),
    "layer.1.DenseReluDense.wo.weight": ("ffn", "down"),
}
_OTHERS = {
    "layer.0.layer_norm.weight": ("attention_norm", "scale"),
    "layer.1.layer_norm.weight": ("ffn_norm", "scale"),
    "layer.0.SelfAttention.relative_attention_bias.weight": ("attention", "relative_bias", "embedding"),
}


def _block_shapes(config: UMT5Config) -> dict[str, tuple[int, ...]]:
    """Original (torch-layout) shape of each per-block tensor."""
    c, inner, ff = config.d_model, config.inner_dim, config.d_ff
    return {
        "layer.0.SelfAttention.q.weight": (inner, c),
        "layer.0.SelfAttention.k.weight": (inner, c),
        "layer.0.SelfAttention.v.weight": (inner, c),
        "layer.0.SelfAttention.o.weight": (c, inner),
        "layer.1.DenseReluDense.wi_0.weight": (ff, c),
        "layer.1.DenseReluDense.wi_1.weight": (ff, c),
        "layer.1.DenseReluDense.wo.weight": (c, ff),
        "layer.0.layer_norm.weight": (c,),
        "layer.1.layer_norm.weight": (c,),
        "layer.0.SelfAttention.relative_attention_bias.weight": (
            config.relative_attention_num_buckets,
            config.num_heads,
        ),
    }


def _mapping(name: str, config: UMT5Config, block_shapes) -> tuple[ParamPath, tuple[int, ...], bool]:
    """(our path, expected original shape, transpose?) of one original tensor name."""
    if name in (_EMBEDDING, _TIED_EMBEDDING):
        return ("token_embedding", "embedding"), (config.vocab_size, config.d_model), False
    if name == "encoder.final_layer_norm.weight":
        return ("final_norm", "scale"), (config.d_model,), False
    match = _BLOCK_KEY.fullmatch(name)
    if match and int(match.group(1)) < config.num_layers and match.group(2) in block_shapes:
        index, rest = int(match.group(1)), match.group(2)
        if rest in _LINEARS:
            return ("layers", index, *_LINEARS[rest], "kernel"), block_shapes[rest], True
        return ("layers", index, *_OTHERS[rest]), block_shapes[rest], False
    raise CheckpointError(
        f"text encoder tensor {name!r} has no place in a {config.num_layers}-layer UMT5 encoder; "
        "is this a UMT5EncoderModel checkpoint matching its config.json?"
    )


def _check_tied_copy(ckpt: SafetensorsCheckpoint) -> None:
    """Refuses an `encoder.embed_tokens.weight` that is not the same matrix as `shared.weight`."""
    shared, tied = ckpt.read(_EMBEDDING), ckpt.read(_TIED_EMBEDDING)
    rows = np.unique(np.linspace(0, shared.shape[0] - 1, num=min(64, shared.shape[0])).astype(np.int64))
    if shared.shape != tied.shape or not np.array_equal(
        shared[rows].astype(np.float32), tied[rows].astype(np.float32)
    ):
        raise CheckpointError(
            f"{ckpt.path}: {_TIED_EMBEDDING} differs from {_EMBEDDING}; the encoder has one token embedding"
        )


def text_encoder_tensors(ckpt: SafetensorsCheckpoint, config: UMT5Config) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """Yields (our parameter path, array) for every tensor of an original UMT5 encoder checkpoint.

    Arrays keep the checkpoint's dtype (float32 or bfloat16); linear weights come transposed to
    the [in, out] kernel layout (a view, not a copy). Every name, shape and dtype is checked from
    the headers before the first tensor is read: a name it cannot map, a shape the config does not
    give or a missing tensor raises CheckpointError before anything is yielded.
    """
    block_shapes = _block_shapes(config)
    names = ckpt.names()
    skip = set()
    if _TIED_EMBEDDING in names and _EMBEDDING in names:
        _check_tied_copy(ckpt)
        skip.add(_TIED_EMBEDDING)
    expected = {("token_embedding", "embedding"), ("final_norm", "scale")}
    for index in range(config.num_layers):
        for rest in block_shapes:
            path, _, _ = _mapping(f"encoder.block.{index}.{rest}", config, block_shapes)
            expected.add(path)
    plan: list[tuple[str, ParamPath, bool]] = []
    for name in names:
        if name in skip:
            continue
        path, shape, transpose = _mapping(name, config, block_shapes)
        if ckpt.shape(name) != shape:
            raise CheckpointError(
                f"{ckpt.path}: {name} has shape {ckpt.shape(name)}, the text encoder config needs {shape}; "
                "is config.json the one of these weights?"
            )
        ckpt.require_float([name], "the text encoder")
        plan.append((name, path, transpose))
    missing = sorted(".".join(str(p) for p in path) for path in expected - {path for _, path, _ in plan})
    if missing:
        raise CheckpointError(
            f"{ckpt.path}: {len(missing)} text encoder tensor(s) missing, e.g. {missing[:5]}; "
            "the download is incomplete or config.json has more layers than the weights"
        )
    for name, path, transpose in plan:
        array = ckpt.read(name)
        yield path, (array.T if transpose else array)
