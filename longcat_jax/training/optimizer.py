"""AdamW with a learning-rate schedule and global-norm clipping (optax), built from the config.

Schedules, over optimiser steps s = 0 .. steps - 1 with w warm-up steps and peak rate r:
    warm-up   r * min(1, (s + 1) / w)        (none when w = 0)
    constant  r
    linear    r * (1 - p)                    p = (s - w) / (steps - w), the progress after warm-up
    cosine    r * (1 + cos(pi p)) / 2
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from longcat_jax.training.config import OptimizerConfig

DECAYING_SCHEDULES = ("linear", "cosine")  # the schedules whose rates depend on the step count (`steps`)


def learning_rate_schedule(config: OptimizerConfig, steps: int) -> optax.Schedule:
    """The learning rate as a function of the optimiser step (see the module docstring)."""
    peak, warmup = config.learning_rate, config.warmup_steps
    decay_steps = max(steps - warmup, 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        rate = jnp.asarray(peak, jnp.float32)
        if warmup:
            rate = rate * jnp.minimum(1.0, (count + 1.0) / warmup)
        progress = jnp.clip((count - warmup) / decay_steps, 0.0, 1.0)
        if config.schedule == "linear":
            rate = rate * (1.0 - progress)
        elif config.schedule == "cosine":
            rate = rate * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return rate

    return schedule


def make_optimizer(config: OptimizerConfig, steps: int) -> optax.GradientTransformation:
    """Clipping (when `max_grad_norm` is set), then AdamW on the schedule."""
    adamw = optax.adamw(learning_rate_schedule(config, steps), b1=config.beta1, b2=config.beta2, eps=config.eps,
                        weight_decay=config.weight_decay)
    if config.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)
