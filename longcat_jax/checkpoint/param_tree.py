"""Strict filling of an `nnx.eval_shape` skeleton with named tensors.

Every model is loaded the same way: build the module abstractly (no memory), then place each
converted tensor at its parameter path. Any parameter left unfilled, any tensor without a place,
and any shape mismatch is an error naming the key, so a wrong or partial checkpoint can never
load silently.

Placement is built for speed: a tensor that arrives as a transposed view of its file's layout (a torch [out, in]
Linear weight read as our [in, out]) is copied as it lies and transposed on an accelerator, where a transpose runs at
memory bandwidth, instead of by numpy on the host (a strided copy at ~0.2 GB/s); on the CPU the runtime's own
strided copy does it (about 5x numpy's). Arrays already on a device (quantized there while loading) are moved, not
pulled back through numpy. No placement waits for the copy to finish.
"""

from __future__ import annotations

import functools
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
    Tensors are moved to the device one at a time, so host memory holds one tensor beyond the source. A tensor may
    be a numpy array (any strides) or a jax array (e.g. quantized on the device while loading).
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
        filled[path] = place(array, target, device)
    missing = sorted(path_str(p) for p in expected if p not in filled)
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} parameter(s) missing from the checkpoint, e.g. {missing[:5]}"
        )
    flat = nnx.to_flat_state(state)
    for path, variable in flat:
        variable.set_value(filled[tuple(path)])
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def place(array, dtype, device: jax.Device | jax.sharding.Sharding | None) -> jax.Array:
    """`array` (numpy, any strides, or jax) as a `dtype` jax array on `device` (None: the default device), without
    waiting for the copy. A numpy array is cast on the host first, so it goes straight to `device`."""
    if isinstance(array, jax.Array):
        return jax.device_put(array if array.dtype == np.dtype(dtype) else array.astype(dtype), device)
    host = np.asarray(array)
    if host.dtype != np.dtype(dtype):
        host = host.astype(dtype)
    stored, axes = as_stored(host)
    accelerator = single_accelerator(device)
    if axes is None or accelerator is None:
        return jax.device_put(host, device)  # the runtime copies any strides (on the CPU, faster than numpy)
    copied = jax.device_put(stored, None if device is None else accelerator)  # None: uncommitted, as before
    on_device = _transposed(copied, axes)  # one tensor's two copies on the device, briefly
    return on_device if device is None or isinstance(device, jax.Device) else jax.device_put(on_device, device)


def as_stored(host: np.ndarray) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """(the array as it lies in memory, the axis order giving `host` from it); (host, None) when `host` is C
    contiguous or not a permutation of a contiguous array."""
    if host.ndim < 2 or host.flags.c_contiguous:
        return host, None
    order = tuple(int(a) for a in np.argsort([-s for s in host.strides], kind="stable"))
    stored = host.transpose(order)
    if not stored.flags.c_contiguous:
        return host, None
    return stored, tuple(int(a) for a in np.argsort(order))


def single_accelerator(device) -> jax.Device | None:
    """The accelerator (not the CPU) behind `device` (a device, or a sharding over one device, its pinned host memory
    included; None: the default device) when it is one, else None (the CPU, or several devices)."""
    if device is None:
        device = jax.local_devices()[0]
    elif isinstance(device, jax.sharding.Sharding):
        if len(device.device_set) != 1:
            return None
        (device,) = device.device_set
    return None if device.platform == "cpu" else device


@functools.partial(jax.jit, static_argnames="axes")
def _transposed(array: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    return jnp.transpose(array, axes)
