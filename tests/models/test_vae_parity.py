"""Wan VAE against the original PyTorch AutoencoderKLWan on the fixture's tiny model (float32, CPU)."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from longcat_jax.metrics import rel_l2
from longcat_jax.models.vae import load_vae

TOL = 1e-4


@pytest.fixture(scope="module")
def vae(fixtures_dir):
    return load_vae(fixtures_dir / "vae", dtype=jnp.float32)


@pytest.fixture(scope="module")
def cases(fixtures_dir):
    return load_file(str(fixtures_dir / "pipeline_cases.safetensors"))


@pytest.fixture(scope="module")
def posterior(vae, cases):
    return vae.encode(cases["vae.video"], tiling=False)


@pytest.fixture(scope="module")
def decoded(vae, cases):
    return vae.decode(cases["vae.latent_mean"], tiling=False)


def test_encode_matches_original(posterior, cases):
    chex.assert_shape(posterior.mean, cases["vae.latent_mean"].shape)
    assert rel_l2(posterior.mean, cases["vae.latent_mean"]) <= TOL
    assert rel_l2(posterior.logvar, cases["vae.latent_logvar"]) <= TOL


def test_decode_matches_original(decoded, cases):
    chex.assert_shape(decoded, cases["vae.decoded"].shape)
    assert rel_l2(decoded, cases["vae.decoded"]) <= TOL
    assert float(jnp.max(jnp.abs(decoded))) <= 1.0


def test_other_time_groupings_give_the_same_result(vae, cases, posterior, decoded):
    """Chunks of several latent frames (a scan step of 8 frames; a single shorter last chunk) and other frame
    groups in the full-resolution layers (whole chunk; 2 frames) equal the defaults (the original's chunks, 1 frame)."""
    frames = cases["vae.video"].shape[2]
    latents = (frames - 1) // 4
    assert latents >= 2, "the fixture video is too short to exercise multi-latent chunks"
    wide = vae.encode(cases["vae.video"], tiling=False, latent_chunk=2, frame_group=None)
    np.testing.assert_allclose(wide.mean, posterior.mean, rtol=1e-5, atol=1e-5)
    tail_only = vae.decode(cases["vae.latent_mean"], tiling=False, latent_chunk=latents + 1, frame_group=2)
    np.testing.assert_allclose(tail_only, decoded, rtol=1e-5, atol=1e-5)


def test_parity_group_vae(fixtures_dir, tmp_path):
    from longcat_jax.parity import vae as parity_vae

    results = parity_vae.run(fixtures_dir, "float32")
    assert [r.name for r in results] == list(parity_vae.CASES)
    assert all(r.status == "PASS" and r.rel_l2 <= r.tol == TOL for r in results), results
    missing = parity_vae.run(tmp_path, "float32")
    assert len(missing) == len(parity_vae.CASES)
    assert all(r.status == "FAIL" and "not found" in r.note for r in missing)
