"""Classifier-free guidance with CFG-zero*'s optimized scale, per batch item, as the original pipelines apply it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from longcat_jax.pipelines.guidance import (
    cfg_zero_star,
    optimized_scale,
    split_uncond_cond,
    uses_guidance,
)


def _reference(cond, uncond, g):
    """CFG-zero* written out in float64 numpy, one batch item at a time."""
    out = []
    for c, u in zip(np.asarray(cond, np.float64), np.asarray(uncond, np.float64)):
        s = np.sum(c * u) / (np.sum(u * u) + 1e-8)
        out.append(u * s + g * (c - u * s))
    return np.stack(out)


def _pair(shape, seed):
    a, b = np.random.default_rng(seed).standard_normal((2, *shape), dtype=np.float32)
    return a, 0.7 * a + 0.3 * b  # correlated, as cond/uncond predictions are


def test_matches_formula_per_batch_item():
    cond, uncond = _pair((3, 16, 3, 4, 6), 0)
    uncond[1] *= -2.0  # make the batch items' scales differ
    got = jax.jit(cfg_zero_star)(cond, uncond, 4.0)
    np.testing.assert_allclose(got, _reference(cond, uncond, 4.0), rtol=1e-5, atol=1e-5)
    scales = jax.jit(optimized_scale)(cond, uncond)
    assert scales.shape == (3,)
    for i in range(3):  # each item's scale depends on that item only
        c, u = cond[i].astype(np.float64), uncond[i].astype(np.float64)
        np.testing.assert_allclose(scales[i], np.sum(c * u) / (np.sum(u * u) + 1e-8), rtol=1e-5)


def test_limits():
    cond, uncond = _pair((1, 4, 2, 3, 3), 1)
    guided = jax.jit(cfg_zero_star)
    chex.assert_trees_all_close(guided(cond, uncond, 1.0), cond, atol=1e-6)  # g = 1: the conditional
    chex.assert_trees_all_close(guided(cond, cond, 4.0), cond, atol=1e-5)  # s = 1 and c = u
    chex.assert_trees_all_close(guided(cond, np.zeros_like(cond), 4.0), 4.0 * cond, atol=1e-6)  # s = 0
    chex.assert_trees_all_close(guided(cond, 2.0 * cond, 4.0), cond, atol=1e-5)  # s = 1/2: u*s = c


def test_bf16_inputs_reduce_in_float32():
    cond, uncond = _pair((1, 16, 4, 8, 8), 3)
    cond, uncond = cond.astype(jnp.bfloat16), uncond.astype(jnp.bfloat16)
    got = jax.jit(cfg_zero_star)(cond, uncond, 4.0)
    assert got.dtype == jnp.float32
    want = _reference(cond.astype(np.float32), uncond.astype(np.float32), 4.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_batch_order_and_switch():
    pred = jnp.arange(4.0)[:, None]
    uncond, cond = split_uncond_cond(pred)  # the original concatenates [negative; positive]
    np.testing.assert_array_equal(uncond[:, 0], [0.0, 1.0])
    np.testing.assert_array_equal(cond[:, 0], [2.0, 3.0])
    assert uses_guidance(4.0) and not uses_guidance(1.0)
