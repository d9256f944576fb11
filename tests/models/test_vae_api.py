"""Wan VAE public API on a tiny random model: the frame-count rule, shapes, (de)normalisation, sampling, config."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longcat_jax.errors import ConfigError, InputError
from longcat_jax.models.vae import LatentDistribution, VAEConfig, random_vae

TINY = VAEConfig(base_dim=4, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                 latents_mean=(0.5, -1.0, 0.0, 2.0), latents_std=(2.0, 0.5, 1.0, 4.0))


@pytest.fixture(scope="module")
def vae():
    return random_vae(TINY, seed=0)


@pytest.mark.parametrize("frames", [1, 13])
def test_frame_count_rule_round_trip(vae, frames):
    """1 + 4k frames encode to 1 + k latent frames, which decode back to 1 + 4k frames."""
    video = jax.random.uniform(jax.random.key(frames), (2, 3, frames, 16, 24), minval=-1, maxval=1)
    posterior = vae.encode(video)
    chex.assert_shape([posterior.mean, posterior.logvar], (2, TINY.z_dim, 1 + (frames - 1) // 4, 2, 3))
    assert float(posterior.logvar.min()) >= -30.0 and float(posterior.logvar.max()) <= 20.0  # clamped
    decoded = vae.decode(posterior.mode())
    chex.assert_shape(decoded, video.shape)
    chex.assert_tree_all_finite(decoded)
    assert float(jnp.max(jnp.abs(decoded))) <= 1.0


@pytest.mark.parametrize(("frames", "nearest"), [(0, "1 or 5"), (2, "1 or 5"), (4, "1 or 5"), (8, "5 or 9"), (94, "93 or 97")])
def test_other_frame_counts_are_refused_naming_the_rule(vae, frames, nearest):
    with pytest.raises(InputError, match=rf"1 \+ 4k.*got {frames}: use {nearest} frames"):
        vae.encode(jnp.zeros((1, 3, frames, 16, 16)))


def test_bad_video_and_latent_shapes_are_refused(vae):
    with pytest.raises(InputError, match="multiples of 8"):
        vae.encode(jnp.zeros((1, 3, 5, 20, 16)))
    with pytest.raises(InputError, match="channels first"):
        vae.encode(jnp.zeros((1, 5, 16, 16, 3)))
    with pytest.raises(InputError, match=r"\[B, 4, T, h, w\]"):
        vae.decode(jnp.zeros((1, 16, 2, 4, 4)))
    with pytest.raises(InputError, match="latent_chunk"):
        vae.decode(jnp.zeros((1, 4, 2, 4, 4)), latent_chunk=0)
    with pytest.raises(InputError, match="frame_group"):
        vae.encode(jnp.zeros((1, 3, 5, 16, 16)), frame_group=0)


def test_normalize_uses_config_statistics_and_inverts(vae):
    latents = jax.random.normal(jax.random.key(1), (1, 4, 3, 2, 2))
    normalized = vae.normalize(latents)
    mean = np.asarray(TINY.latents_mean).reshape(1, 4, 1, 1, 1)
    std = np.asarray(TINY.latents_std).reshape(1, 4, 1, 1, 1)
    np.testing.assert_allclose(normalized, (np.asarray(latents) - mean) / std, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vae.denormalize(normalized), latents, rtol=1e-6, atol=1e-6)


def test_sample_is_seeded_mean_plus_std_noise():
    mean = jax.random.normal(jax.random.key(2), (1, 4, 2, 3, 3))
    logvar = jax.random.normal(jax.random.key(3), mean.shape)
    dist = LatentDistribution(mean=mean, logvar=logvar)
    key = jax.random.key(4)
    np.testing.assert_array_equal(dist.sample(key), dist.sample(key))
    assert not np.allclose(dist.sample(key), dist.sample(jax.random.key(5)))
    noise = (dist.sample(key) - mean) / jnp.exp(0.5 * logvar)
    np.testing.assert_allclose(noise, jax.random.normal(key, mean.shape), rtol=1e-4, atol=1e-4)
    assert dist.mode() is mean


def test_config_round_trips_and_refuses_unknown_or_wan22_keys(fixtures_dir):
    config = VAEConfig.from_json(fixtures_dir / "vae" / "config.json")
    assert VAEConfig.from_dict(config.to_dict()) == config
    raw = config.to_dict()
    with pytest.raises(ConfigError, match="colour_space"):
        VAEConfig.from_dict({**raw, "colour_space": "rgb"})
    with pytest.raises(ConfigError, match="Wan 2.2"):
        VAEConfig.from_dict({**raw, "is_residual": True})
    with pytest.raises(ConfigError, match="temporal compression"):
        VAEConfig.from_dict({**raw, "temperal_downsample": [True, True, True]})
    with pytest.raises(ConfigError, match="latents_std"):
        VAEConfig.from_dict({**raw, "latents_std": [1.0] * 3})
