"""One optimiser step as one compiled function: micro-batches, flow-matching loss, gradients of the LoRA, AdamW.

The DiT enters as (graphdef, factors, frozen): the graphdef (architecture, BSA setting, remat) and the `StepSpec`
(optimiser, σ distribution, condition frames) are static; the LoRA factors, optimiser state, frozen weights,
batch and key are arguments. Only the factors are differentiated, so the base weights (any dtype, or FP8/INT8
`QuantizedLinear`s) get no gradient and no optimiser state. Gradient accumulation is a `lax.scan` over the
micro-batches inside the step, so a step is one dispatch whatever the accumulation, and the optimiser sees the mean
gradient.

Randomness is a function of the step's key only (itself `fold_in(seed, step)`): per micro-batch i, the latent
sample from the cached posterior, the noise and σ come from `fold_in(key, i)`. A resumed run therefore draws
exactly what the uninterrupted one drew.

Data parallel and FSDP: the caller places the batch split over the mesh's axis (its batch dimension) and the
frozen weights replicated or split (`longcat_jax.sharding.param_shardings`); XLA partitions the step from those
placements, reducing the LoRA gradients across devices. The same function runs on one device or a mesh.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from longcat_jax.quantization.compile_options import quantized_jit
from longcat_jax.training.config import OptimizerConfig
from longcat_jax.training.objective import (
    SigmaSampling,
    flow_matching_loss,
    frame_timesteps,
    noised_latents,
    sample_sigmas,
    velocity_target,
)
from longcat_jax.training.optimizer import make_optimizer


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about a training step (hashable: it keys the compiled function)."""

    optimizer: OptimizerConfig
    steps: int
    sigma: SigmaSampling
    num_cond_latents: int

    def make_optimizer(self) -> optax.GradientTransformation:
        return make_optimizer(self.optimizer, self.steps)


def micro_batch_loss(model, micro: dict[str, jax.Array], key: jax.Array, spec: StepSpec) -> jax.Array:
    """The flow-matching loss of one micro-batch (latent_mean/latent_std [B, C, T, h, w], text, mask)."""
    latent_key, noise_key, sigma_key = jax.random.split(key, 3)
    mean = micro["latent_mean"]
    clean = mean + micro["latent_std"] * jax.random.normal(latent_key, mean.shape, jnp.float32)
    noise = jax.random.normal(noise_key, mean.shape, jnp.float32)
    sigma = sample_sigmas(sigma_key, mean.shape[0], spec.sigma)  # [B]
    cond = spec.num_cond_latents
    latents = noised_latents(clean, noise, sigma, cond)
    timestep = frame_timesteps(sigma, mean.shape[2], cond)  # [B, T]
    prediction = model(latents, timestep, micro["text"], micro["mask"], num_cond_latents=cond)
    return flow_matching_loss(prediction, velocity_target(clean, noise), cond)


def _train_step(graphdef, spec: StepSpec, factors, opt_state, frozen, batch: dict[str, jax.Array], key: jax.Array):
    def loss_of(factors, micro, micro_key):
        return micro_batch_loss(nnx.merge(graphdef, factors, frozen), micro, micro_key, spec)

    grad_fn = jax.value_and_grad(loss_of)

    def accumulate(carry, inputs):
        grad_sum, loss_sum = carry
        micro, index = inputs
        loss, grads = grad_fn(factors, micro, jax.random.fold_in(key, index))
        return (jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss), None

    micro_batches = batch["latent_mean"].shape[0]
    zeros = jax.tree.map(jnp.zeros_like, factors)
    (grad_sum, loss_sum), _ = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32)),
                                           (batch, jnp.arange(micro_batches)))
    grads = jax.tree.map(lambda g: g / micro_batches, grad_sum)
    optimizer = spec.make_optimizer()
    updates, opt_state = optimizer.update(grads, opt_state, factors)
    factors = optax.apply_updates(factors, updates)
    return factors, opt_state, {"loss": loss_sum / micro_batches, "grad_norm": optax.tree.norm(grads)}


@functools.cache
def _compiled(donate: bool):
    # Donating the factors and optimiser state lets XLA update them in place (GPU/TPU); the CPU ignores donation
    # with a warning, so it is off there. quantized_jit: jax.jit, with the XLA options FP8 GEMMs need on GPUs when
    # the frozen base is FP8 (`longcat_jax.quantization.compile_options`).
    return quantized_jit(_train_step, static_argnums=(0, 1), donate_argnums=(2, 3) if donate else ())


def train_step(graphdef, spec: StepSpec, factors, opt_state, frozen, batch: dict[str, jax.Array], key: jax.Array):
    """One optimiser step -> (factors, opt_state, {"loss", "grad_norm"}).

    batch: `Batch` fields as arrays, micro-batches first ([A, B, ...]); key: this step's key. The loss is the mean
    over micro-batches; grad_norm is the global norm of the mean gradient before clipping.
    """
    return _compiled(jax.default_backend() != "cpu")(graphdef, spec, factors, opt_state, frozen, batch, key)
