"""VAE work on the mesh: frames split into vertical (or horizontal) strips, one per device.

The VAE's layers are convolutions over (T, H, W) and per-pixel norms, so XLA partitions them spatially by
itself: each device computes its strip and trades a few border rows or columns with its neighbours
(collective-permutes) before each convolution, and the result is the unsplit one (float32 rounding aside).
Only the small attention of the lowest-resolution block gathers its frame. Activation memory per device is
about 1/n of the whole, which is what the 720p decode needs.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from longcat_jax.sharding.mesh import CONTEXT_AXIS
from longcat_jax.sharding.params import put

logger = logging.getLogger(__name__)


def split_spatially(x: jax.Array | np.ndarray, mesh: Mesh, axis: str = CONTEXT_AXIS) -> jax.Array:
    """x [B, C, T, H, W] (latents or video) on the mesh, split along W (or H, whichever the mesh divides;
    W first); replicated when neither is divisible, which still runs, just without the split."""
    size = mesh.shape[axis]
    for dim in (4, 3):
        if x.shape[dim] % size == 0:
            spec = [None] * x.ndim
            spec[dim] = axis
            return put(x, NamedSharding(mesh, P(*spec)))
    logger.info("%d devices divide neither side of %s: the VAE runs unsplit on each", size, tuple(x.shape))
    return put(x, NamedSharding(mesh, P()))


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host) mesh array as numpy on this process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
