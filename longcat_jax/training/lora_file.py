"""Writing a trained LoRA in the original LongCat LoRA file format, which `--lora` and the original code both load.

One safetensors file; per adapted Linear, with N its original module name with "." replaced by
"___lorahyphen___" and prefixed "lora___lorahyphen___" (`models.dit.lora_params`):

    N.lora_down.weight  [rank, in]   float32 (torch Linear layout)
    N.lora_up.weight    [out, rank]  float32
    N.alpha_scale       []           float32, alpha / rank

The original's `LongCatVideoTransformer3DModel.load_lora(path, key, lora_network_dim=RANK, lora_network_alpha=ALPHA)`
builds its modules with the rank it is given (128 by default) before loading the file strictly, so pass the
rank trained with; the file's alpha_scale is what is applied. The file is written under a temporary name and
renamed, so a crash never leaves a half-written LoRA.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from longcat_jax.models.dit.lora import LoRA
from longcat_jax.models.dit.lora_params import LORA_HYPHEN, LORA_PREFIX
from longcat_jax.training.trainable_lora import LoRATarget


def original_lora_name(original_module: str) -> str:
    """'blocks.0.attn.qkv' -> 'lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___attn___lorahyphen___qkv'."""
    return LORA_PREFIX + original_module.replace(".", LORA_HYPHEN)


def lora_file_tensors(lora: LoRA, targets: list[LoRATarget]) -> dict[str, np.ndarray]:
    """The tensors of the original format for `lora` (factors of every target), by name."""
    tensors = {}
    for target in targets:
        factors = lora.modules[target.path]
        name = original_lora_name(target.original_name)
        tensors[f"{name}.lora_down.weight"] = np.ascontiguousarray(factors.down.T, np.float32)
        tensors[f"{name}.lora_up.weight"] = np.ascontiguousarray(factors.up.T, np.float32)
        tensors[f"{name}.alpha_scale"] = np.asarray(factors.alpha_scale, np.float32)
    return tensors


def save_lora_file(path: str | Path, lora: LoRA, targets: list[LoRATarget], *, metadata: dict[str, str] | None = None
                   ) -> Path:
    """Writes `lora` to `path` (.safetensors) in the original format, atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    try:
        save_file(lora_file_tensors(lora, targets), name, metadata=metadata)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return path
