"""The LongCat video DiT in flax.nnx: config, model, loading and LoRA.

Names are resolved on first use (PEP 562), so `convert/` (which maps checkpoints onto these modules)
and `loading` (which uses `convert/`) can import each other's submodules without a cycle.
"""

import importlib

_EXPORTS = {
    "DiTConfig": "config",
    "KVCache": "transformer",
    "LongCatDiT": "transformer",
    "load_dit": "loading",
    "LoRA": "lora",
    "load_lora": "lora",
    "enable_loras": "lora",
    "disable_loras": "lora",
    "merge_loras": "lora",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
