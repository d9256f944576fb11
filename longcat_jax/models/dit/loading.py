"""A ready `LongCatDiT`: `load_dit` from an original `dit/` folder, FastVideo's `transformer/` folder or our converted
one, `random_dit` with random weights (the built-in model, tests, and the benchmarks' real-size DiT without a
checkpoint)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from longcat_jax.checkpoint.orbax_chunks import is_converted, iter_part, read_index
from longcat_jax.checkpoint.param_tree import abstract_model, fill_model, single_accelerator
from longcat_jax.checkpoint.prefetch import prefetched
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.fastvideo_params import checkpoint_dit_tensors
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.quantization import check_quantize_supported, quantize_tensors, stored_quantization
from longcat_jax.quantization.modes import check_stored_quantization


def load_dit(path: str | Path, *, config: DiTConfig | None = None, dtype=jnp.bfloat16, param_dtype=None,
             device: jax.Device | jax.sharding.Sharding | None = None, quantize: str | None = None) -> LongCatDiT:
    """Loads the DiT from `path` (a folder with config.json and either the original safetensors
    shards, FastVideo's conversion of them (`transformer/`: its tensor names are recognised) or our converted
    checkpoint).

    config: the folder's config, when the caller has read it already (a run reads `dit/config.json` once);
    None reads it. dtype: activation dtype; param_dtype: weight dtype (default: dtype). Self attention starts
    block-sparse only where the config's `enable_bsa` says so; `LongCatDiT.set_bsa` changes it.
    quantize: 'fp8', 'fp8-weight-only' or 'int8' quantizes the large Linears tensor by tensor while loading: on the
    target accelerator when there is one (one bf16 kernel there at a time, quantized, then freed: the device never
    holds the bf16 model), else on the host; a checkpoint converted with `--quantize` needs the mode its weights were
    stored in (an FP8 one: 'fp8' or 'fp8-weight-only'). None/'none': the weights as stored.
    Tensors are read (and host-quantized) in a background thread a few tensors ahead of their placement.
    """
    path = Path(path)
    config = config or DiTConfig.from_json(path / "config.json")
    param_dtype = dtype if param_dtype is None else param_dtype
    devices = device.device_set if isinstance(device, jax.sharding.Sharding) else [device] if device else None
    check_quantize_supported(quantize, devices)
    if is_converted(path):
        entries = read_index(path)
        check_stored_quantization(path, stored_quantization((e["path"], e["dtype"]) for e in entries), quantize)
        tensors, count = iter_part(path), len(entries)
    else:
        tensors, count = checkpoint_dit_tensors(SafetensorsCheckpoint(path), config)
    tensors = tqdm(tensors, total=count, desc="Loading DiT", unit="tensor")  # one per parameter, read in order
    on_device = single_accelerator(device)  # quantize there, one kernel at a time; None: on the host
    if on_device is None:
        tensors = prefetched(quantize_tensors(tensors, quantize, source=str(path)))
    else:
        tensors = quantize_tensors(prefetched(tensors), quantize, source=str(path), device=on_device)
    return fill_model(
        lambda: LongCatDiT(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype, quantize=quantize),
        tensors,
        source=str(path),
        device=device,
    )


def random_dit(
    config: DiTConfig,
    *,
    seed: int = 0,
    dtype=jnp.float32,
    param_dtype=None,
    draw_on_device: bool = False,
    device: jax.Device | None = None,
) -> LongCatDiT:
    """A `LongCatDiT` with random weights: kernels ~ N(0, 1/fan_in) so activations keep their scale through the
    blocks, biases 0, norm scales 1; the same seed gives the same weights.

    `draw_on_device=False` draws on the host with numpy (instant for small models: no compilation);
    `draw_on_device=True` draws each parameter on `device` with `jax.random` (one compilation per distinct shape),
    so the real 13.6B size builds on a GPU in seconds without passing 27 GB through host memory.
    `device` defaults to this process's first local device (in a multi-host run `jax.devices()[0]` belongs to
    process 0).
    """
    param_dtype = dtype if param_dtype is None else param_dtype
    device = device or jax.local_devices()[0]

    def make() -> LongCatDiT:
        return LongCatDiT(config, rngs=nnx.Rngs(seed), dtype=dtype, param_dtype=param_dtype)

    graphdef, state, shapes = abstract_model(make)
    if draw_on_device:
        # fill_model would pass every array through numpy (the host); set the device arrays directly instead.
        key = jax.random.key(seed)
        flat = nnx.to_flat_state(state)
        with jax.default_device(device):
            for index, (path, variable) in enumerate(flat):
                leaf = shapes[tuple(path)]
                variable.set_value(
                    _device_leaf(jax.random.fold_in(key, index), tuple(leaf.shape), jnp.dtype(leaf.dtype).name, path[-1])
                )
        return nnx.merge(graphdef, nnx.from_flat_state(flat))
    rng = np.random.default_rng(seed)
    tensors = ((path, _host_leaf(rng, tuple(leaf.shape), path[-1])) for path, leaf in shapes.items())
    return fill_model(make, tensors, source=f"random DiT weights (seed {seed})", dtype=param_dtype, device=device)


def _host_leaf(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "kernel":
        return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(np.prod(shape[:-1])))
    return (np.ones if kind == "scale" else np.zeros)(shape, np.float32)


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "kind"))
def _device_leaf(key: jax.Array, shape: tuple[int, ...], dtype: str, kind: str) -> jax.Array:
    if kind == "kernel":
        draw = jax.random.normal(key, shape, jnp.float32) / np.sqrt(np.prod(shape[:-1]))
        return draw.astype(dtype)
    return (jnp.ones if kind == "scale" else jnp.zeros)(shape, dtype)
