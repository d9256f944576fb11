"""Seeds to JAX random keys, every bit of a 64-bit seed counted.

Why: `jax.random.key(seed)` keeps only a seed's low 32 bits unless `jax_enable_x64` is on, so `--seed 5` and
`--seed 4294967301` (2**32 + 5) drew the same noise and made the same video. `key_from_seed` builds the threefry key
that `jax.random.key` gives with 64-bit integers on: [seed >> 32, seed & 0xFFFFFFFF]. For seeds below 2**32 that is
`jax.random.key(seed)`'s key, so their videos are unchanged.
"""

from __future__ import annotations

import jax
import numpy as np

from longcat_jax.errors import InputError

MAX_SEED = 2**64 - 1  # two 32-bit words of a threefry key


def key_from_seed(seed: int) -> jax.Array:
    """The typed threefry key of `seed` (an int in 0..2**64 - 1)."""
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"a seed must be in 0..{MAX_SEED}, got {seed}")
    words = np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32)  # [hi, lo]
    return jax.random.wrap_key_data(words, impl="threefry2x32")
