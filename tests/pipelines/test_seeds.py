"""Seeds to random keys: every bit of a 64-bit seed counts, and seeds below 2**32 keep `jax.random.key`'s key."""

import jax
import numpy as np
import pytest

from longcat_jax.errors import InputError
from longcat_jax.seeds import MAX_SEED, key_from_seed


def _draw(key) -> np.ndarray:
    return np.asarray(jax.random.normal(key, (8,)))


@pytest.mark.parametrize("seed", [0, 42, 2**32 - 1])
def test_seeds_below_two_to_the_32_draw_as_jax_random_key_does(seed):
    np.testing.assert_array_equal(_draw(key_from_seed(seed)), _draw(jax.random.key(seed)))


def test_seeds_that_differ_only_above_bit_32_draw_differently():
    draws = [_draw(key_from_seed(seed)) for seed in (5, 2**32 + 5, 2**40 + 5, MAX_SEED)]
    assert len({draw.tobytes() for draw in draws}) == len(draws)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_a_seed_out_of_range_is_refused(seed):
    with pytest.raises(InputError, match="a seed must be in"):
        key_from_seed(seed)
