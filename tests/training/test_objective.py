"""The flow-matching objective agrees with our sampler: the target it regresses to, fed to `euler_step` along
`make_schedule`'s table, carries noise to the data; and its pieces do what the derivation says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longcat_jax.pipelines.scheduler import euler_step, make_schedule
from longcat_jax.training.objective import (
    SigmaSampling,
    flow_matching_loss,
    frame_timesteps,
    noised_latents,
    sample_sigmas,
    shift_sigmas,
    velocity_target,
)


def test_the_target_drives_our_euler_sampler_from_noise_to_the_data():
    # With one training latent x0, the loss minimiser at x_σ is the target x0 - ε with ε = (x_σ - (1 - σ) x0) / σ.
    # Our sampler, fed that prediction at the timesteps it uses, must land on x0; a sign error would diverge.
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.standard_normal((1, 4, 3, 2, 2)), jnp.float32)
    latents = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
    schedule = make_schedule(8)
    for index in range(schedule.num_steps):
        sigma = schedule.sigmas[index]
        assert float(schedule.timesteps[index]) == pytest.approx(float(frame_timesteps(sigma[None], 1, 0)[0, 0]))
        noise = (latents - (1 - sigma) * x0) / sigma
        latents = euler_step(latents, velocity_target(x0, noise), sigma, schedule.sigmas[index + 1])
    np.testing.assert_allclose(np.asarray(latents), np.asarray(x0), atol=1e-4)


def test_noising_keeps_condition_frames_clean_and_zeroes_their_timestep():
    clean = jnp.ones((2, 3, 4, 2, 2))
    noise = jnp.zeros_like(clean)
    sigma = jnp.array([0.25, 0.75])
    noisy = noised_latents(clean, noise, sigma, num_cond_latents=1)
    np.testing.assert_array_equal(noisy[:, :, :1], 1.0)
    np.testing.assert_allclose(noisy[:, :, 1:], (1 - sigma)[:, None, None, None, None] * np.ones((2, 3, 3, 2, 2)))
    np.testing.assert_allclose(frame_timesteps(sigma, 4, 1), [[0, 250, 250, 250], [0, 750, 750, 750]])


def test_the_loss_leaves_condition_frames_out():
    target = jnp.zeros((1, 2, 3, 2, 2))
    prediction = target.at[:, :, 0].set(5.0)  # wrong only on the condition frame
    assert float(flow_matching_loss(prediction, target, 1)) == 0.0
    assert float(flow_matching_loss(prediction, target, 0)) == pytest.approx(25.0 / 3)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_sigma_sampling_stays_in_range_and_shift_moves_it_up(kind):
    key = jax.random.key(0)
    plain = sample_sigmas(key, 4096, SigmaSampling(kind))
    shifted = sample_sigmas(key, 4096, SigmaSampling(kind, shift=3.0))
    assert float(plain.min()) > 0 and float(plain.max()) < 1
    assert float(shifted.mean()) > float(plain.mean()) + 0.1
    np.testing.assert_allclose(shift_sigmas(plain, 3.0), shifted, rtol=1e-6)
    if kind == "uniform":
        assert abs(float(plain.mean()) - 0.5) < 0.02
    else:  # logit-normal(0, 1) is symmetric around 0.5 with less mass at the ends than uniform
        assert abs(float(plain.mean()) - 0.5) < 0.02 and float(jnp.mean(plain < 0.1)) < 0.06
