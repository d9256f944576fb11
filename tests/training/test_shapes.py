"""Training sizes: buckets scaled for the model, condition latents per task, BSA tiling and BSA backends the
platform or the Pallas kernels cannot run refused before compute."""

import jax
import pytest

from kernels import BSAParams
from longcat_jax.errors import ConfigError
from longcat_jax.training.config import parse_train_config
from longcat_jax.training.models import ModelSizes, model_sizes
from longcat_jax.training.shapes import check_bsa_backend, check_bsa_tiling, clip_size, num_cond_latents


def _config(**sections):
    return parse_train_config({"data": {"folder": "clips"}, **sections})


def test_buckets_follow_the_aspect_ratio_and_the_model_scale():
    config = _config()
    assert clip_size(config, ModelSizes(1.0, 512), 1080, 1920) == (480, 832)  # 16:9 -> the 0.58 bucket
    assert clip_size(config, ModelSizes(1.0, 512), 1920, 1080) == (832, 480)
    assert clip_size(config, model_sizes(config), 1080, 1920) == (128, 208)  # the built-in model's quarter size
    fixed = _config(data={"folder": "clips", "height": 64, "width": 96})
    assert clip_size(fixed, ModelSizes(1.0, 512), 1080, 1920) == (64, 96)


def test_condition_latents_per_task():
    assert num_cond_latents(_config()) == 0
    assert num_cond_latents(_config(task={"name": "i2v"})) == 1
    assert num_cond_latents(_config(task={"name": "continuation", "num_cond_frames": 13})) == 4


def test_bsa_buckets_are_padded_and_only_conditions_only_grids_refused():
    bsa = BSAParams(sparsity=0.9375)  # (4, 4, 4) chunks
    check_bsa_tiling(bsa, [(24, 88, 160)], 0)  # 720p, 93 frames: tokens (24, 44, 80)
    check_bsa_tiling(bsa, [(1, 60, 104)], 0)  # one latent frame attends densely
    check_bsa_tiling(None, [(24, 60, 104)], 0)
    check_bsa_tiling(bsa, [(24, 60, 104)], 0)  # 480p: 30 x 52 tokens, padded to whole chunks inside the attention
    check_bsa_tiling(bsa, [(24, 88, 160)], 1)  # i2v: the one condition frame padded to a 4-frame chunk
    with pytest.raises(ConfigError, match=r"704x1280 with 4 latent frames \(4 of them conditions\).*enable_bsa"):
        check_bsa_tiling(bsa, [(4, 88, 160)], 4)  # every latent frame a condition: nothing to generate


def test_bsa_backends_are_checked_against_the_platform_and_the_pallas_sizes(monkeypatch):
    fits = BSAParams(sparsity=0.5)  # (4, 4, 4) chunks: 64 tokens
    small = BSAParams(sparsity=0.5, chunk_3d_shape_q=(1, 2, 2), chunk_3d_shape_k=(1, 2, 2))  # 4-token chunks
    check_bsa_backend(None, "pallas", 32)  # dense attention: no backend runs
    check_bsa_backend(small, "reference", 32)
    check_bsa_backend(fits, "pallas_interpret", 64)
    with pytest.raises(ConfigError, match=r"'pallas_interpret'.*4-token q .*power-of-two.*chunk_3d_shape_q"):
        check_bsa_backend(small, "pallas_interpret", 64)
    with pytest.raises(ConfigError, match=r"head_dim \(64, 128\), got 32.*'bsa.backend': 'reference'"):
        check_bsa_backend(fits, "pallas_interpret", 32)
    if jax.default_backend() != "gpu":
        check_bsa_backend(small, "auto", 32)  # the reference off a GPU
        with pytest.raises(ConfigError, match=r"'pallas' runs its kernels on an NVIDIA GPU.*'pallas_interpret'"):
            check_bsa_backend(fits, "pallas", 64)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # 'auto' picks the Pallas kernels on a GPU
    check_bsa_backend(fits, "pallas", 128)
    with pytest.raises(ConfigError, match=r"'auto' runs the Pallas kernels on this GPU.*4-token"):
        check_bsa_backend(small, "auto", 64)
