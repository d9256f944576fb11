"""Lowering a jitted function for CUDA on a machine without a GPU: the text of its StableHLO.

Pallas' Triton lowering in JAX 0.11 asks which GPU it lowers for and, with none attached, raises "No supported GPU
devices found"; JAX 0.10 did not ask. So every CUDA lowering in the tests runs inside an abstract mesh of one H100,
which both versions accept and Mosaic GPU ignores.
"""

from __future__ import annotations

import jax

H100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=None, platform="cuda")


def lowered_for_cuda(fn, *args) -> str:
    """StableHLO text of `jax.jit(fn)` traced on `args` (arrays or `jax.ShapeDtypeStruct`s), lowered for CUDA."""
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=H100)):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
