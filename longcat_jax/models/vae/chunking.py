"""Causal processing in time: chunk loops that carry the convolution caches (jit-friendly `lax.scan`s).

Every temporal operation of the VAE is causal and every other one is per frame, so a stretch of
layers with a frame cache gives the same result however its frames are grouped. Two loops use that:

- `causal_chunks`: the video-level loop of the original (first frame or latent alone, then fixed
  chunks), whose chunk boundaries matter for the temporal resampling;
- `frame_groups`: inside one chunk, runs a stretch of layers without temporal resampling (the
  full-resolution ones) a few frames at a time, so only those frames' activations are alive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

CausalFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


def _scan_groups(fn: CausalFn, x: jax.Array, cache: Any, size: int) -> tuple[jax.Array, Any]:
    """fn over x `[B, n * size, ...]` in n consecutive groups of `size` along axis 1, cache as carry."""
    batch, count = x.shape[:2]
    groups = x.reshape(batch, count // size, size, *x.shape[2:]).swapaxes(0, 1)  # [n, B, size, ...]

    def body(carry, group):
        out, carry = fn(group, carry)
        return carry, out

    cache, ys = jax.lax.scan(body, cache, groups)  # ys [n, B, size', ...]
    return ys.swapaxes(0, 1).reshape(batch, -1, *ys.shape[3:]), cache


def causal_chunks(step: CausalFn, x: jax.Array, chunk: int) -> jax.Array:
    """Runs `step(x_chunk, cache) -> (y, cache)` over x `[B, N, ...]` along axis 1: the first element
    alone (cache None), then `chunk` at a time; a shorter last chunk, if any, in one more call."""
    outputs, cache = step(x[:, :1], None)
    outputs = [outputs]
    rest = x[:, 1:]
    full = (rest.shape[1] // chunk) * chunk
    if full:
        ys, cache = _scan_groups(step, rest[:, :full], cache, chunk)
        outputs.append(ys)
    if full < rest.shape[1]:
        outputs.append(step(rest[:, full:], cache)[0])
    return jnp.concatenate(outputs, axis=1)


def frame_groups(fn: CausalFn, x: jax.Array, cache: Any, group: int | None) -> tuple[jax.Array, Any]:
    """Runs the causal, frame-preserving `fn` over x `[B, T, ...]` `group` frames at a time.

    Exact for any grouping. Falls back to one call when `group` is None, covers T, does not divide
    T, or the cache is None (the first chunk: one frame).
    """
    count = x.shape[1]
    if group is None or cache is None or count <= group or count % group:
        return fn(x, cache)
    return _scan_groups(fn, x, cache, group)
