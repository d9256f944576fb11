"""Builds the UMT5 encoder: from an original `text_encoder/` folder (sharded or not, float32 or
bfloat16 on disk) or our converted one (`python -m convert`), or with random weights for the
built-in demo model and tests."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from longcat_jax.checkpoint.orbax_chunks import is_converted, iter_part, read_index
from longcat_jax.checkpoint.param_tree import abstract_model, fill_model
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import CheckpointError
from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.text_encoder.params import _EMBEDDING, _TIED_EMBEDDING, text_encoder_tensors
from longcat_jax.models.text_encoder.umt5 import UMT5Encoder

logger = logging.getLogger(__name__)


def load_text_encoder(
    path: str | Path,
    *,
    dtype=jnp.bfloat16,
    device: jax.Device | jax.sharding.Sharding | None = None,
) -> UMT5Encoder:
    """Builds the UMT5 encoder from `path`: an original `text_encoder/` folder (config.json and
    safetensors, as downloaded) or the folder `python -m convert` made of it.

    `dtype` is both the parameter and the compute dtype (bfloat16 for the real model, float32 for
    parity checks); norms, the attention core and the residual stream run in float32 either way.
    `device` places the weights (default: JAX's default device), e.g. `jax.devices("cpu")[0]` to
    keep a GPU free for the DiT. Tensors are read and placed one at a time.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"text encoder folder {path} not found; pass the checkpoint's text_encoder/ folder")
    config = UMT5Config.from_json(path)
    if is_converted(path):
        tensors, kind, count = iter_part(path), "converted", len(read_index(path))
    else:
        checkpoint = SafetensorsCheckpoint(path)
        tensors, kind, count = text_encoder_tensors(checkpoint, config), "original", _yielded_count(checkpoint)
    logger.info(
        "Loading UMT5 text encoder from %s (%s; %d layers, d_model %d) as %s",
        path,
        kind,
        config.num_layers,
        config.d_model,
        jnp.dtype(dtype).name,
    )
    return fill_model(
        lambda: UMT5Encoder(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype),
        tqdm(tensors, total=count, desc="Loading text encoder", unit="tensor"),
        source=str(path),
        dtype=dtype,
        device=device,
    )


def _yielded_count(checkpoint: SafetensorsCheckpoint) -> int:
    """How many tensors `text_encoder_tensors` yields: each stored one but a tied copy of the token embedding,
    which it checks and skips (the count a loading bar runs to)."""
    return len(checkpoint.names()) - (_EMBEDDING in checkpoint and _TIED_EMBEDDING in checkpoint)


def random_text_encoder(
    config: UMT5Config,
    *,
    seed: int = 0,
    dtype=jnp.float32,
    device: jax.Device | jax.sharding.Sharding | None = None,
) -> UMT5Encoder:
    """A UMT5 encoder with random weights drawn on the host (no compilation; meant for small configs).

    Scales follow T5's initialization so activations stay in a realistic range: embeddings N(0, 1),
    each projection N(0, 1/fan_in), the query also divided by sqrt(d_kv) (attention is unscaled),
    relative position biases N(0, 1/d_model), norm scales 1. Same seed, same weights.
    """
    def make() -> UMT5Encoder:
        return UMT5Encoder(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype)

    _, _, shapes = abstract_model(make)
    rng = np.random.default_rng(seed)

    def draw(path: tuple, shape: tuple[int, ...]) -> np.ndarray:
        if path[-1] == "scale":
            return np.ones(shape, np.float32)
        if path[-1] == "kernel":
            std = shape[0] ** -0.5 * (config.d_kv**-0.5 if path[-2] == "query" else 1.0)
        elif path[-2] == "relative_bias":
            std = config.d_model**-0.5
        else:
            std = 1.0
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)

    tensors = ((path, draw(path, value.shape)) for path, value in shapes.items())
    return fill_model(make, tensors, source=f"random UMT5 weights (seed {seed})", dtype=dtype, device=device)
