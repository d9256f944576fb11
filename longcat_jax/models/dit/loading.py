"""`load_dit`: a ready `LongCatDiT` from an original `dit/` folder or from our converted one."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from convert.checkpoint import is_converted, iter_part
from convert.dit import dit_tensors
from convert.param_tree import fill_model
from convert.safetensors_io import SafetensorsCheckpoint
from kernels import BSAParams
from longcat_jax.errors import CheckpointError
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.transformer import LongCatDiT

logger = logging.getLogger(__name__)


def load_dit(path: str | Path, *, dtype=jnp.bfloat16, param_dtype=None,
             bsa: bool | BSAParams | Mapping | None = None,
             device: jax.Device | jax.sharding.Sharding | None = None) -> LongCatDiT:
    """Loads the DiT from `path` (a folder with config.json and either the original safetensors
    shards or our converted checkpoint).

    dtype: activation dtype; param_dtype: weight dtype (default: dtype).
    bsa: None keeps the config's enable_bsa; False turns block-sparse attention off; True turns it on
    with the config's bsa_params; a BSAParams or `bsa_params` dict turns it on with those.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json; point at the dit/ folder of the checkpoint")
    config = DiTConfig.from_json(path / "config.json")
    param_dtype = dtype if param_dtype is None else param_dtype
    if is_converted(path):
        tensors = iter_part(path)
    else:
        tensors = dit_tensors(SafetensorsCheckpoint(path), config)
    model = fill_model(
        lambda: LongCatDiT(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype),
        tensors,
        source=str(path),
        device=device,
    )
    if bsa is not None:
        model.set_bsa(BSAParams.from_dict(bsa) if isinstance(bsa, Mapping) else bsa)
    if model.bsa is not None:
        logger.info("DiT self attention is block-sparse: %s", model.bsa)
    return model
