"""`block_keep_attention` is refused before the DiT loads where its kept tensors cannot fit one GPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from longcat_jax.errors import ConfigError
from longcat_jax.memory.device import DeviceMemory
from longcat_jax.memory.footprint import dit_weights
from longcat_jax.training.config import DataConfig, TrainConfig, TrainingConfig
from longcat_jax.training.remat_memory import (
    check_keep_attention_fits,
    kept_attention_bytes,
    lora_state_bytes,
    max_clip_tokens,
)
from tests.memory.real_configs import DIT

GIB = 2**30
H100_AT_75_PERCENT = DeviceMemory(int(0.75 * 80 * GIB), "gpu", "a test's 80 GB GPU at JAX's default 75%")
TOKENS_480P = 24 * 30 * 52  # 93 frames at 480x832
TOKENS_720P_SPATIAL = 24 * 44 * 80


def _config(remat: str, batch: int = 1) -> TrainConfig:
    return TrainConfig(data=DataConfig(folder=Path("clips")), training=dataclasses.replace(TrainingConfig(), remat=remat,
                                                                                    batch_size=batch))


def test_the_counted_bytes_are_the_documented_ones():
    # README and remat.py: 48 x N x 8,320 bytes, 13.9 GiB at 480p; the LoRA (rank 128, attention + FFN) and its
    # AdamW state measured 2.26 + 4.51 GiB on an H200 (BENCHMARKS.md), which with its gradients is 4 copies.
    assert kept_attention_bytes(DIT, TOKENS_480P) == 48 * TOKENS_480P * 8320
    assert round(kept_attention_bytes(DIT, TOKENS_480P) / GIB, 1) == 13.9
    assert round(lora_state_bytes(DIT, _config("block").lora.modules, 128) / 4 / GIB, 2) == 2.26
    assert max_clip_tokens([(24, 60, 104), (24, 88, 160)]) == TOKENS_720P_SPATIAL


def test_720p_keep_attention_is_refused_on_an_80_gb_gpu_and_480p_is_not():
    with pytest.raises(ConfigError, match=r"'training.remat'.*\"block\""):
        check_keep_attention_fits(_config("block_keep_attention"), DIT, TOKENS_720P_SPATIAL, H100_AT_75_PERCENT)
    check_keep_attention_fits(_config("block_keep_attention"), DIT, TOKENS_480P, H100_AT_75_PERCENT)
    weights = dit_weights(DIT).total
    with pytest.raises(ConfigError, match="batch 2"):  # the kept tensors grow with the batch
        check_keep_attention_fits(_config("block_keep_attention", batch=2), DIT, TOKENS_480P,
                                  DeviceMemory(weights + 28 * GIB, "gpu", "a test's GPU"))


def test_other_modes_the_cpu_and_meshes_are_not_checked():
    small = DeviceMemory(GIB, "gpu", "a test's small GPU")
    check_keep_attention_fits(_config("block"), DIT, TOKENS_720P_SPATIAL, small)
    check_keep_attention_fits(_config("block_keep_attention"), DIT, TOKENS_720P_SPATIAL,
                              DeviceMemory(GIB, "cpu", "a test's CPU"))
    check_keep_attention_fits(_config("block_keep_attention"), DIT, TOKENS_720P_SPATIAL, small, devices=2)
