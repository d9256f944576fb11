"""Writes a checkpoint in FastVideo's layout from one in the original's, as FastVideo's conversion script
(`scripts/checkpoint_conversion/longcat_to_fastvideo.py` in hao-ai-lab/FastVideo) lays it out:

    transformer/config.json        the original's, `num_heads` renamed `num_attention_heads`, its own `_class_name`
    transformer/model.safetensors  one file; fused q/k/v and cross-attention k/v split along the outputs, renamed
    vae/, text_encoder/, tokenizer/, scheduler/   as in the original
    lora/distilled/cfg_step_lora.safetensors, lora/refinement/refinement_lora.safetensors   lora_A / lora_B / lora_alpha
    model_index.json

The renames are written out here on their own (not taken from `longcat_jax.models.dit.fastvideo_params`), so the
tests check the loader's map against an independent statement of FastVideo's layout.

    python -m tests.helpers.fastvideo_checkpoint SRC DST     # SRC: an original folder (dit/, vae/, ...)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np

from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from tests.helpers.dit_checkpoints import write_safetensors

# (original name prefix or infix, FastVideo's), applied once, first match wins: FastVideo's renames.
_RENAMES = [
    ("x_embedder.", "patch_embed."),
    ("t_embedder.mlp.0.", "time_embedder.linear_1."),
    ("t_embedder.mlp.2.", "time_embedder.linear_2."),
    ("y_embedder.y_proj.0.", "caption_embedder.linear_1."),
    ("y_embedder.y_proj.2.", "caption_embedder.linear_2."),
    ("final_layer.adaLN_modulation.1.", "final_layer.adaln_linear."),
    ("final_layer.linear.", "final_layer.proj."),
    (".adaLN_modulation.1.", ".adaln_linear_1."),
    (".attn.proj.", ".self_attn.to_out."),
    (".attn.q_norm.", ".self_attn.q_norm."),
    (".attn.k_norm.", ".self_attn.k_norm."),
    (".cross_attn.q_linear.", ".cross_attn.to_q."),
    (".cross_attn.proj.", ".cross_attn.to_out."),
    (".pre_crs_attn_norm.", ".norm_cross."),
]
# Fused original module (inside a block) -> FastVideo's modules of its equal output parts.
_SPLITS = {
    "attn.qkv": ("self_attn.to_q", "self_attn.to_k", "self_attn.to_v"),
    "cross_attn.kv_linear": ("cross_attn.to_k", "cross_attn.to_v"),
}
_BLOCK = re.compile(r"(blocks\.\d+)\.(.+)")
LORA_FOLDERS = {"cfg_step_lora": "distilled", "refinement_lora": "refinement"}
MODEL_INDEX = {
    "_class_name": "LongCatPipeline", "_diffusers_version": "0.32.0", "workload_type": "video-generation",
    "tokenizer": ["transformers", "AutoTokenizer"], "text_encoder": ["transformers", "UMT5EncoderModel"],
    "vae": ["diffusers", "AutoencoderKLWan"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "transformer": ["diffusers", "LongCatTransformer3DModel"],
}


def _split_module(module: str) -> tuple[str, tuple[str, ...]] | None:
    """(block prefix, FastVideo modules) where `module` (e.g. 'blocks.0.attn.qkv') is a fused Linear."""
    match = _BLOCK.fullmatch(module)
    if match and match.group(2) in _SPLITS:
        return match.group(1), _SPLITS[match.group(2)]
    return None


def _renamed(name: str) -> str:
    for old, new in _RENAMES:
        if name.startswith(old) or (old.startswith(".") and old in name):
            return name.replace(old, new, 1)
    return name


def fastvideo_dit(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The original DiT's tensors under FastVideo's names, fused Linears split."""
    out = {}
    for name, array in tensors.items():
        module, _, param = name.rpartition(".")
        split = _split_module(module)
        if split is None:
            out[_renamed(name)] = array
            continue
        block, parts = split
        for part, piece in zip(parts, np.split(array, len(parts), axis=0), strict=True):
            out[f"{block}.{part}.{param}"] = np.ascontiguousarray(piece)
    return out


def fastvideo_dit_config(config: dict) -> dict:
    """The original's dit/config.json as FastVideo's conversion rewrites it."""
    out = {("num_attention_heads" if key == "num_heads" else key): value for key, value in config.items()}
    out["_class_name"] = "LongCatTransformer3DModel"
    return out


def _lora_module(name: str) -> str:
    return name.removeprefix("lora___lorahyphen___").replace("___lorahyphen___", ".")


def fastvideo_lora(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An original LongCat LoRA (lora_down / lora_up or lora_up.blocks.N / alpha_scale) in FastVideo's naming.
    A fused Linear's parts: with `lora_up.blocks.N`, part N takes its rows of lora_down and block N (FastVideo's
    rule); with one `lora_up`, each part takes the whole lora_down and its rows of lora_up (the same update)."""
    modules: dict[str, dict[str, np.ndarray]] = {}
    for name, array in tensors.items():
        lora, _, slot = name.partition(".")
        modules.setdefault(_lora_module(lora), {})[slot] = array
    out = {}
    for module, factors in modules.items():
        scale = float(factors["alpha_scale"])
        down = factors["lora_down.weight"]
        blocks = [factors[f"lora_up.blocks.{i}.weight"] for i in range(len(factors)) if f"lora_up.blocks.{i}.weight" in factors]
        split = _split_module(module)
        if split is None:
            pieces = [(_renamed(module + ".")[:-1], down, factors["lora_up.weight"])]
        elif blocks:
            block, parts = split
            rank = down.shape[0] // len(parts)
            pieces = [(f"{block}.{part}", down[i * rank:(i + 1) * rank], blocks[i]) for i, part in enumerate(parts)]
        else:
            block, parts = split
            ups = np.split(factors["lora_up.weight"], len(parts), axis=0)
            pieces = [(f"{block}.{part}", down, up) for part, up in zip(parts, ups, strict=True)]
        for target, a, b in pieces:
            out[f"{target}.lora_A"] = np.ascontiguousarray(a)
            out[f"{target}.lora_B"] = np.ascontiguousarray(b)
            out[f"{target}.lora_alpha"] = np.asarray(scale * a.shape[0], dtype=np.float32)
    return out


def read_all(path: Path) -> dict[str, np.ndarray]:
    ckpt = SafetensorsCheckpoint(path)
    return {name: ckpt.read(name) for name in ckpt.names()}


def write_fastvideo_checkpoint(src: Path, dst: Path, *, loras: dict[str, Path] | None = None) -> Path:
    """FastVideo's layout of the original folder `src` in `dst` (its vae/, text_encoder/, tokenizer/, scheduler/
    copied where present); `loras` maps cfg_step_lora / refinement_lora to original LoRA files (default: `src`'s
    lora/NAME.safetensors, where present)."""
    transformer = dst / "transformer"
    transformer.mkdir(parents=True)
    write_safetensors(transformer / "model.safetensors", fastvideo_dit(read_all(src / "dit")))
    config = json.loads((src / "dit" / "config.json").read_text())
    (transformer / "config.json").write_text(json.dumps(fastvideo_dit_config(config), indent=2))
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part)
    if loras is None:
        loras = {name: src / "lora" / f"{name}.safetensors" for name in LORA_FOLDERS
                 if (src / "lora" / f"{name}.safetensors").is_file()}
    for name, file in loras.items():
        folder = dst / "lora" / LORA_FOLDERS[name]
        folder.mkdir(parents=True)
        write_safetensors(folder / f"{name}.safetensors", fastvideo_lora(read_all(file)))
    (dst / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="an original LongCat-Video folder (dit/, vae/, ...)")
    parser.add_argument("dst", type=Path, help="a new folder for FastVideo's layout")
    args = parser.parse_args()
    print(write_fastvideo_checkpoint(args.src, args.dst))


if __name__ == "__main__":
    main()
