"""Where a model's parameters live on the mesh: replicated (default) or split FSDP-style.

FSDP here means storage only: each array is split along one axis that the mesh divides, so a device holds about
1/n of the model; the DiT all-gathers one block's weights just before running it (`ContextParallel.gather_block`)
and XLA partitions the other models' few layers as it sees fit. Arrays with no divisible axis (norm scales,
small biases) stay replicated.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def fsdp_spec(shape: tuple[int, ...], size: int, axis: str) -> P:
    """The spec splitting the largest dimension of `shape` that `size` divides (ties: the last); none: replicated."""
    candidates = [(dim, index) for index, dim in enumerate(shape) if dim % size == 0 and dim >= size]
    if size == 1 or not candidates:
        return P()
    _, index = max(candidates)
    return P(*([None] * index), axis)


Split = bool | Callable[[tuple[str, ...]], bool]


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))) for entry in path)


def param_shardings(state: nnx.State, mesh, axis: str, *, fsdp: Split) -> nnx.State:
    """A tree like `state` of NamedShardings: replicated, or `fsdp_spec` for the arrays that `fsdp` selects
    (True: all; a function of the array's path, e.g. ('blocks', '0', 'ffn', 'w1', 'kernel', 'value'))."""
    size = mesh.shape[axis]

    def sharding(path, leaf):
        split = fsdp(_names(path)) if callable(fsdp) else fsdp
        return NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), size, axis) if split else P())

    return jax.tree_util.tree_map_with_path(sharding, state)


def put(tree, shardings):
    """`jax.device_put(tree, shardings)`, also when the mesh spans several processes and the arrays are this
    process's own copies (a checkpoint every process loaded, noise every process drew from the same seed): each
    process then fills its devices' pieces from its copy, and no data crosses hosts."""

    def put_one(x, sharding):
        local = isinstance(x, np.ndarray) or (isinstance(x, jax.Array) and x.is_fully_addressable)
        if local and not sharding.is_fully_addressable:
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
        return jax.device_put(x, sharding)

    return jax.tree.map(put_one, tree, shardings)


def place_module(module: nnx.Module, mesh, axis: str, *, fsdp: Split) -> None:
    """Moves every array of `module` (parameters, LoRA factors, ...) onto the mesh, in place; `fsdp` as in
    `param_shardings`."""
    state = nnx.state(module)
    nnx.update(module, put(state, param_shardings(state, mesh, axis, fsdp=fsdp)))


def bytes_per_device(module: nnx.Module) -> dict[int, int]:
    """Bytes of `module`'s arrays held by each device id (what FSDP divides)."""
    held: dict[int, int] = {}
    for leaf in jax.tree.leaves(nnx.state(module)):
        for shard in leaf.addressable_shards:
            held[shard.device.id] = held.get(shard.device.id, 0) + shard.data.nbytes
    return held
