"""Building the Wan VAE with weights: from an original `vae/` folder (config.json + safetensors), from
the folder `python -m convert` made of it, or random (tests and benchmarks)."""

from __future__ import annotations

import logging
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from longcat_jax.checkpoint.orbax_chunks import is_converted, iter_part, read_index
from longcat_jax.checkpoint.param_tree import fill_model
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.vae import params as vae_params
from longcat_jax.models.vae.autoencoder import WanVAE
from longcat_jax.models.vae.config import VAEConfig
from longcat_jax.models.vae.tiling import TilingConfig

logger = logging.getLogger(__name__)


def load_vae(
    path: str | Path,
    *,
    dtype=jnp.float32,
    param_dtype=None,
    tiling: TilingConfig = TilingConfig(),
) -> WanVAE:
    """Builds `WanVAE` from `path/config.json` and fills it strictly from the folder's weights.

    `path` is an original `vae/` folder (diffusers safetensors, as downloaded) or our converted one.
    `dtype` is the compute dtype; `param_dtype` (default: `dtype`) the dtype the weights are kept in.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json; pass the checkpoint's vae/ folder")
    config = VAEConfig.from_json(path / "config.json")
    param_dtype = dtype if param_dtype is None else param_dtype
    if is_converted(path):
        tensors, kind, count = iter_part(path), "converted", len(read_index(path))
    else:
        checkpoint = SafetensorsCheckpoint(path)
        tensors, kind, count = vae_params.vae_tensors(checkpoint, config), "original", len(checkpoint.names())
    logger.info(
        "loading Wan VAE from %s (%s; compute %s, weights %s)",
        path, kind, jnp.dtype(dtype).name, jnp.dtype(param_dtype).name,
    )

    def make_model() -> WanVAE:
        return WanVAE(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype, tiling=tiling)

    tensors = tqdm(tensors, total=count, desc="Loading VAE", unit="tensor")  # one per stored tensor
    return fill_model(make_model, tensors, source=str(path), dtype=param_dtype)


def random_vae(
    config: VAEConfig,
    *,
    seed: int = 0,
    dtype=jnp.float32,
    param_dtype=None,
    tiling: TilingConfig = TilingConfig(),
) -> WanVAE:
    """A `WanVAE` with random weights (kernels ~ N(0, 1/fan_in), zero biases, unit norm scales).

    Built from host-side random numbers into an abstract model, which is much faster than running
    the per-layer initialisers eagerly; for tests and benchmarks of the real architecture.
    """
    param_dtype = dtype if param_dtype is None else param_dtype
    rng = np.random.default_rng(seed)

    def make_model() -> WanVAE:
        return WanVAE(config, rngs=nnx.Rngs(seed), dtype=dtype, param_dtype=param_dtype, tiling=tiling)

    def tensors():
        for path, shape in vae_params.expected_shapes(config).items():
            if path[-1] == "kernel":
                fan_in = int(np.prod(shape[:-1]))
                yield path, rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)
            elif path[-1] == "scale":
                yield path, np.ones(shape, np.float32)
            else:
                yield path, np.zeros(shape, np.float32)

    return fill_model(make_model, tensors(), source=f"random weights (seed {seed})", dtype=param_dtype)
