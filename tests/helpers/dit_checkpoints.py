"""Test helpers: write safetensors files (bf16 included) and synthetic checkpoints in the original DiT naming."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

_DTYPE_NAMES = {
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
}


def write_raw_safetensors(path: Path, header: object, data: bytes = b"") -> None:
    """Writes `header` (any JSON value, to forge malformed files) and `data` in the safetensors framing."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], *, shapes: dict[str, tuple] | None = None) -> None:
    """Writes a safetensors file; `shapes` can override a tensor's declared shape (to forge a bad header)."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        shape = (shapes or {}).get(name, array.shape)
        header[name] = {"dtype": _DTYPE_NAMES[array.dtype], "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def write_sharded(folder: Path, tensors: dict[str, np.ndarray], num_shards: int, *,
                  prefix: str = "diffusion_pytorch_model") -> None:
    """Writes `tensors` as `num_shards` shards plus the `.safetensors.index.json` the original uses."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    weight_map = {}
    for index in range(num_shards):
        shard = f"{prefix}-{index + 1:05d}-of-{num_shards:05d}.safetensors"
        part = names[index::num_shards]
        write_safetensors(folder / shard, {n: tensors[n] for n in part})
        weight_map.update({n: shard for n in part})
    (folder / f"{prefix}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def dit_config(*, hidden_size: int, depth: int, num_heads: int, caption_channels: int = 16,
               adaln_tembed_dim: int = 16) -> dict:
    """A `dit/config.json` dict of the original format."""
    return {
        "_class_name": "LongCatVideoTransformer3DModel",
        "in_channels": 4, "out_channels": 4, "hidden_size": hidden_size, "depth": depth, "num_heads": num_heads,
        "caption_channels": caption_channels, "mlp_ratio": 4, "adaln_tembed_dim": adaln_tembed_dim,
        "frequency_embedding_size": 32, "patch_size": [1, 2, 2], "enable_flashattn3": False,
        "enable_flashattn2": False, "enable_xformers": False, "enable_bsa": False, "bsa_params": None,
        "cp_split_hw": [1, 1], "text_tokens_zero_pad": True,
    }


def original_dit_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the original LongCatVideoTransformer3DModel state dict for `config`."""
    c, t, cap = config["hidden_size"], config["adaln_tembed_dim"], config["caption_channels"]
    head = c // config["num_heads"]
    ffn = 256 * ((int(2 * c * config["mlp_ratio"] / 3) + 255) // 256)
    pt, ph, pw = config["patch_size"]
    shapes = {
        "x_embedder.proj.weight": (c, config["in_channels"], pt, ph, pw), "x_embedder.proj.bias": (c,),
        "t_embedder.mlp.0.weight": (t, config["frequency_embedding_size"]), "t_embedder.mlp.0.bias": (t,),
        "t_embedder.mlp.2.weight": (t, t), "t_embedder.mlp.2.bias": (t,),
        "y_embedder.y_proj.0.weight": (c, cap), "y_embedder.y_proj.0.bias": (c,),
        "y_embedder.y_proj.2.weight": (c, c), "y_embedder.y_proj.2.bias": (c,),
        "final_layer.adaLN_modulation.1.weight": (2 * c, t), "final_layer.adaLN_modulation.1.bias": (2 * c,),
        "final_layer.linear.weight": (pt * ph * pw * config["out_channels"], c),
        "final_layer.linear.bias": (pt * ph * pw * config["out_channels"],),
    }
    for i in range(config["depth"]):
        block = {
            "adaLN_modulation.1.weight": (6 * c, t), "adaLN_modulation.1.bias": (6 * c,),
            "attn.qkv.weight": (3 * c, c), "attn.qkv.bias": (3 * c,), "attn.proj.weight": (c, c),
            "attn.proj.bias": (c,), "attn.q_norm.weight": (head,), "attn.k_norm.weight": (head,),
            "pre_crs_attn_norm.weight": (c,), "pre_crs_attn_norm.bias": (c,),
            "cross_attn.q_linear.weight": (c, c), "cross_attn.q_linear.bias": (c,),
            "cross_attn.kv_linear.weight": (2 * c, c), "cross_attn.kv_linear.bias": (2 * c,),
            "cross_attn.proj.weight": (c, c), "cross_attn.proj.bias": (c,),
            "cross_attn.q_norm.weight": (head,), "cross_attn.k_norm.weight": (head,),
            "ffn.w1.weight": (ffn, c), "ffn.w2.weight": (c, ffn), "ffn.w3.weight": (ffn, c),
        }
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def random_dit_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random bf16 tensors for every original DiT name of `config`."""
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(ml_dtypes.bfloat16)
        for name, shape in original_dit_shapes(config).items()
    }


def write_original_dit(folder: Path, config: dict, *, num_shards: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A complete original-format `dit/` folder (config.json, shards, index); returns its tensors."""
    tensors = random_dit_tensors(config, seed)
    write_sharded(folder, tensors, num_shards)
    (folder / "config.json").write_text(json.dumps(config))
    return tensors
