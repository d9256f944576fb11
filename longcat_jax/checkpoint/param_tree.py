"""Strict filling of an `nnx.eval_shape` skeleton with named tensors.

Every model is loaded the same way: build the module abstractly (no memory), then place each
converted tensor at its parameter path. Any parameter left unfilled, any tensor without a place,
and any shape mismatch is an error naming the key, so a wrong or partial checkpoint can never
load silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longcat_jax.errors import CheckpointError

ParamPath = tuple[str | int, ...]


def path_str(path: ParamPath) -> str:
    return ".".join(str(p) for p in path)


def abstract_model(make_model: Callable[[], nnx.Module]):
    """(graphdef, abstract state, {path: ShapeDtypeStruct}) of the module `make_model` would build.

    Allocates nothing: the module is traced with `nnx.eval_shape`."""
    graphdef, state = nnx.split(nnx.eval_shape(make_model))
    flat = {tuple(p): v.get_value() for p, v in nnx.to_flat_state(state)}
    return graphdef, state, flat


def fill_model(
    make_model: Callable[[], nnx.Module],
    tensors: Iterable[tuple[ParamPath, np.ndarray]],
    *,
    source: str,
    dtype=None,
    device: jax.Device | jax.sharding.Sharding | None = None,
) -> nnx.Module:
    """Builds the module from `tensors` (path, array) pairs, refusing unmapped, missing or misshapen keys
    and integer arrays for float parameters (a cast would load nonsense silently).

    `dtype` casts floating parameters (None keeps each parameter's declared dtype); `device` places them.
    Tensors are moved to the device one at a time, so host memory holds one tensor beyond the source.
    """
    graphdef, state, expected = abstract_model(make_model)
    filled: dict[ParamPath, jax.Array] = {}
    for path, array in tensors:
        path = tuple(path)
        if path not in expected:
            raise CheckpointError(f"{source}: tensor for {path_str(path)} has no parameter in the model")
        if path in filled:
            raise CheckpointError(f"{source}: parameter {path_str(path)} given twice")
        want = expected[path]
        if tuple(array.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{source}: parameter {path_str(path)} has shape {tuple(array.shape)} in the checkpoint, "
                f"the model config needs {tuple(want.shape)}; is config.json the one of these weights?"
            )
        floating = jnp.issubdtype(want.dtype, jnp.floating)
        if floating and np.dtype(array.dtype).kind in "biu":
            raise CheckpointError(
                f"{source}: parameter {path_str(path)} is {np.dtype(array.dtype).name} in the checkpoint where the model "
                "has a float parameter; the checkpoint is damaged or not a LongCat-Video checkpoint, convert or "
                "download it again"
            )
        target = want.dtype if dtype is None or not floating else dtype
        host = np.asarray(array)
        if host.dtype != np.dtype(target):
            host = host.astype(target)  # on the host: the tensor goes straight to `device`, not via the default one
        filled[path] = jax.device_put(host, device)
    missing = sorted(path_str(p) for p in expected if p not in filled)
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} parameter(s) missing from the checkpoint, e.g. {missing[:5]}"
        )
    flat = nnx.to_flat_state(state)
    for path, variable in flat:
        variable.set_value(filled[tuple(path)])
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
