"""The sequence-parallel DiT: `shard_dit` puts a `LongCatDiT` on a mesh; its calls then run split over it.

    mesh = make_mesh(4)                      # 4 GPUs (default: all)
    shard_dit(dit, mesh)                     # or fsdp=True to store 1/4 of the weights per GPU
    out = jax.jit(step)(...)                 # same call, same result as on one device

The DiT's tokens are split over the mesh; self attention swaps to a split over heads (all-to-all) so that BSA
selection and the attention kernel see every token of their heads, exactly as on one device; see `plan.py`.
Inputs may be numpy, uncommitted arrays or arrays already on the mesh (jit moves them); outputs are mesh arrays.
"""

from __future__ import annotations

import logging

from flax import nnx
from jax.sharding import Mesh

from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.sharding.mesh import CONTEXT_AXIS, make_mesh
from longcat_jax.sharding.plan import ContextParallel

logger = logging.getLogger(__name__)


def shard_dit(dit: LongCatDiT, mesh: Mesh | int | None = None, *, fsdp: bool = False,
              axis: str = CONTEXT_AXIS) -> ContextParallel:
    """Makes `dit` run context-parallel over `axis` of `mesh` (a Mesh, a device count for `make_mesh`, or None:
    all devices) and moves its weights there: replicated, or split FSDP-style with `fsdp`. In place; returns the
    plan. A mesh of one device still works (the plan then changes nothing but placement)."""
    if not isinstance(mesh, Mesh):
        mesh = make_mesh(mesh)
    plan = ContextParallel(mesh, axis, fsdp)
    dit.set_context_parallel(plan)
    nnx.update(dit, plan.place(nnx.state(dit)))
    logger.info(
        "DiT context parallel over %d devices (%s), weights %s", plan.size, mesh.devices.flat[0].platform,
        "split FSDP-style" if fsdp else "replicated",
    )
    return plan
