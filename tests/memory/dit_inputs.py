"""A tiny random DiT and inputs of every call kind it takes (shared by the streaming and chunking tests)."""

import dataclasses

import jax
import jax.numpy as jnp

from kernels import BSAParams
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.presets import TINY_DIT_CONFIG

# 4 latent frames of 8x8 tokens: BSA's 4x4x4 chunks tile it.
LATENT_SHAPE = (16, 4, 16, 16)
TEXT_LEN = 8


def tiny_dit(*, bsa: bool = False, depth: int = 2, seed: int = 1):
    config = dataclasses.replace(TINY_DIT_CONFIG, depth=depth)
    dit = random_dit(config, seed=seed)
    if bsa:
        dit.set_bsa(BSAParams(sparsity=0.5))
    return dit


def inputs(dit, batch: int = 2, frames: int = 4):
    keys = jax.random.split(jax.random.key(0), 3)
    latents = jax.random.normal(keys[0], (batch, 16, frames, *LATENT_SHAPE[2:]))
    timestep = jnp.linspace(900.0, 100.0, batch)
    text = jax.random.normal(keys[1], (batch, 1, TEXT_LEN, dit.config.caption_channels))
    mask = jnp.ones((batch, TEXT_LEN), jnp.int32).at[-1, 5:].set(0)
    return latents, timestep, text, mask
