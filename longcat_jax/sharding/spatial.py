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


def split_axis(height: int, width: int, devices: int) -> int | None:
    """The axis `split_spatially` splits an [..., height, width] array along over `devices`: -1 (W) or -2 (H),
    whichever they divide, W first; None where they divide neither (the VAE then runs unsplit on each device, and
    the memory plan counts it whole)."""
    for dim, side in ((-1, width), (-2, height)):
        if side % devices == 0:
            return dim
    return None


def split_spatially(x: jax.Array | np.ndarray, mesh: Mesh, axis: str = CONTEXT_AXIS) -> jax.Array:
    """x [B, C, T, H, W] (latents or video) on the mesh, split along W (or H, whichever the mesh divides;
    W first); replicated when neither is divisible, which still runs, just without the split."""
    size = mesh.shape[axis]
    dim = split_axis(x.shape[-2], x.shape[-1], size)
    if dim is not None:
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
