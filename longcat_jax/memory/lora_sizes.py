"""The device bytes of a LoRA once loaded, read from its file's header (or its converted folder's index).

A LoRA file's size is not what it takes on the device: a fused Linear's update stored in parts (`lora_up.blocks.N`,
N of n parts of [out / n, rank]) is loaded as one block-diagonal [n * rank, out] factor (`models.dit.lora_params`),
n times the parts' size, and every factor is kept in the DiT's parameter dtype whatever the file's. For the
released refinement LoRA (rank 128) the six-part adaLN updates alone grow from 0.30 GB in the file to 1.85 GB.

A file in FastVideo's naming (`lora_A` / `lora_B` per split module) is counted as stored: its q/k/v and k/v parts
also load as one block-diagonal factor (`models.dit.fastvideo_lora_params`), so that count is low by the parts'
expansion (at rank 128: 0.4 GB of the released distill LoRA's 1.7 GB).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from longcat_jax.checkpoint.orbax_chunks import is_converted, read_index
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint

UP_PART = ".lora_up.blocks."
ALPHA = "alpha_scale"


def lora_elements(path: str | Path) -> int:
    """Elements of a LoRA's factors as loaded (split up factors as their block-diagonal whole); its alpha scalars
    aside. `path`: an original LoRA `.safetensors` file or a converted LoRA folder."""
    path = Path(path)
    if path.is_dir() and is_converted(path):  # stored in our layout: the factors as loaded
        return sum(math.prod(entry["shape"]) for entry in read_index(path) if entry["path"][-1] != ALPHA)
    checkpoint = SafetensorsCheckpoint(path)
    elements, parts, part_elements = 0, Counter(), Counter()
    for name in checkpoint.names():
        if name.endswith(ALPHA):
            continue
        size = math.prod(checkpoint.shape(name))
        elements += size
        if UP_PART in name:
            module = name.split(UP_PART)[0]
            parts[module] += 1
            part_elements[module] += size
    # n parts holding e elements together become one (n * rank) x out matrix of n * e elements.
    return elements + sum((parts[module] - 1) * part_elements[module] for module in parts)


def lora_device_bytes(path: str | Path, param_bytes: int) -> int:
    """Device bytes of the LoRA at `path` loaded next to a DiT whose parameters take `param_bytes` bytes each."""
    return lora_elements(path) * param_bytes
