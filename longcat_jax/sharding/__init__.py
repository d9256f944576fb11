"""Multi-device and multi-host runs: a device mesh and context (sequence) parallelism for the DiT, the VAE decode
and the text encoder on it. See `mesh.py` for multi-host launches.

Names are resolved on first use (PEP 562), so the models can be imported without this package and this package
without pulling in every model.
"""

import importlib

_EXPORTS = {
    "CONTEXT_AXIS": "mesh",
    "make_mesh": "mesh",
    "initialize_distributed": "mesh",
    "ContextParallel": "plan",
    "shard_dit": "context_parallel",
    "shard_pipeline": "pipeline",
    "split_spatially": "spatial",
    "to_host": "spatial",
    "param_shardings": "params",
    "bytes_per_device": "params",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
