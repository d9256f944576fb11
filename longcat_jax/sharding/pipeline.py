"""`shard_pipeline`: every model of a `LongCatPipeline` on one mesh, for `--context-parallel N`.

    pipe = LongCatPipeline.from_pretrained(path)
    shard_pipeline(pipe, make_mesh(n), fsdp=False)      # before encoding prompts or sampling
    generate_t2v(pipe, ...)                              # unchanged calls, same videos as on one device

- DiT: context parallel (`shard_dit`): tokens split over the devices, Ulysses all-to-all around self attention.
- Text encoder: weights replicated, or split FSDP-style with `fsdp` (XLA then partitions its layers).
- VAE: weights replicated (0.5 GB); the pipeline splits each encode/decode into strips over the devices
  (`spatial.split_spatially`, used by `LongCatPipeline.encode_frames` / `decode_latents` via `pipe.mesh`).
"""

from __future__ import annotations

import logging

from jax.sharding import Mesh

from longcat_jax.models.text_encoder.prompt import is_released
from longcat_jax.sharding.context_parallel import shard_dit
from longcat_jax.sharding.mesh import CONTEXT_AXIS, make_mesh
from longcat_jax.sharding.params import place_module
from longcat_jax.sharding.plan import ContextParallel

logger = logging.getLogger(__name__)


def shard_pipeline(pipe, mesh: Mesh | int | None = None, *, fsdp: bool = False) -> ContextParallel | None:
    """Puts the pipeline's DiT, VAE and text encoder on `mesh` (a Mesh, a device count, or None: all devices);
    in place. A single device changes nothing and returns None. Call it before the first prompt or step;
    LoRAs attached later (`use_dit`) follow the DiT onto the mesh by themselves."""
    if not isinstance(mesh, Mesh):
        mesh = make_mesh(mesh)
    if mesh.size == 1:
        logger.info("One device: no context parallelism")
        return None
    plan = shard_dit(pipe.dit, mesh, fsdp=fsdp)
    place_module(pipe.vae, mesh, CONTEXT_AXIS, fsdp=False)
    if not is_released(pipe.text_encoder):
        place_module(pipe.text_encoder, mesh, CONTEXT_AXIS, fsdp=fsdp)
    pipe.mesh = mesh
    return plan
