"""The flow-matching objective, written to match our sampler (`pipelines.scheduler`) and the original's.

Derivation. Latents x_0 (the VAE posterior sample, normalised) and noise ε ~ N(0, I) are joined by the straight
path of rectified flow,

    x_σ = (1 - σ) x_0 + σ ε,        σ ∈ [0, 1] (σ = 1: pure noise; `scheduler.noise_to_level`),

whose velocity along σ is dx_σ/dσ = ε - x_0. The sampler (`scheduler.euler_step`, as the original pipeline, which
negates the DiT output before diffusers' Euler step) integrates from σ = 1 down to 0 with

    x_{σ'} = x_σ + (σ' - σ) · (-v̂),

so it takes -v̂ for dx/dσ: the DiT output v̂ must estimate -(ε - x_0) = x_0 - ε. The loss is the regression of
that target,

    L = E_{x_0, ε, σ} || v̂(x_σ, t = 1000 σ, text) - (x_0 - ε) ||²,

with the DiT's timestep t = 1000 σ exactly as sampling feeds it (`Schedule.timesteps = sigmas * 1000`). Its
minimiser is v̂ = E[x_0 - ε | x_σ], whose probability-flow ODE carries N(0, I) at σ = 1 to the data at σ = 0:
the Euler sampler then samples the trained distribution. The squared error is averaged over the generated
latent elements of each sample, then over the batch.

Conditioned training (i2v, continuation): the first `num_cond_latents` latent frames stay clean (x_σ = x_0 there),
get timestep 0 and are excluded from the loss, exactly as `Denoiser.step` feeds condition frames and never
steps them. With condition frames in the input the DiT's condition tokens attend only to each other and take no
text, which is what the KV-cache path of continuation computes, so one objective serves both.

σ distribution: "uniform" draws σ ~ U(0, 1); "logit_normal" draws σ = sigmoid(m + s·n), n ~ N(0, 1), which puts
more weight on middle noise levels. Either is then shifted as the scheduler shifts its tables,
σ ← shift·σ / (1 + (shift - 1)·σ) (shift > 1 moves training toward noisier levels, as for larger videos).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from longcat_jax.pipelines.scheduler import NUM_TRAIN_TIMESTEPS


@dataclasses.dataclass(frozen=True)
class SigmaSampling:
    """How σ is drawn per sample (see the module docstring); hashable, so it can be static in a jitted step."""

    kind: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0


def shift_sigmas(sigma: jax.Array, shift: float) -> jax.Array:
    """The scheduler's time shift `shift·σ / (1 + (shift - 1)·σ)`; identity for shift 1."""
    if shift == 1.0:
        return sigma
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sample_sigmas(key: jax.Array, batch: int, sampling: SigmaSampling) -> jax.Array:
    """σ [batch] float32 in (0, 1) drawn as `sampling` says."""
    if sampling.kind == "uniform":
        sigma = jax.random.uniform(key, (batch,), jnp.float32)
    else:
        normal = jax.random.normal(key, (batch,), jnp.float32)
        sigma = jax.nn.sigmoid(sampling.logit_mean + sampling.logit_std * normal)
    return shift_sigmas(sigma, sampling.shift)


def noised_latents(clean: jax.Array, noise: jax.Array, sigma: jax.Array, num_cond_latents: int) -> jax.Array:
    """x_σ = (1 - σ) x_0 + σ ε per sample, the first `num_cond_latents` latent frames left clean.

    clean, noise: [B, C, T, H, W]; sigma: [B].
    """
    s = sigma.reshape(-1, 1, 1, 1, 1)
    noisy = (1.0 - s) * clean + s * noise
    if num_cond_latents == 0:
        return noisy
    return jnp.concatenate([clean[:, :, :num_cond_latents], noisy[:, :, num_cond_latents:]], axis=2)


def frame_timesteps(sigma: jax.Array, num_frames: int, num_cond_latents: int) -> jax.Array:
    """The DiT's timestep per latent frame [B, T]: 1000 σ, and 0 on condition frames."""
    t = jnp.broadcast_to((sigma * NUM_TRAIN_TIMESTEPS)[:, None], (sigma.shape[0], num_frames))
    return t.at[:, :num_cond_latents].set(0.0) if num_cond_latents else t


def velocity_target(clean: jax.Array, noise: jax.Array) -> jax.Array:
    """What the DiT output regresses to: x_0 - ε (the negated path velocity, the sampler's sign)."""
    return clean - noise


def flow_matching_loss(prediction: jax.Array, target: jax.Array, num_cond_latents: int) -> jax.Array:
    """Mean squared error over the generated frames (condition frames excluded), per sample then over the batch.

    prediction, target: [B, C, T, H, W]; returns a float32 scalar.
    """
    error = (prediction[:, :, num_cond_latents:].astype(jnp.float32) - target[:, :, num_cond_latents:]) ** 2
    return jnp.mean(jnp.mean(error, axis=(1, 2, 3, 4)))
