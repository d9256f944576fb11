"""A remat mode whose step cannot fit one GPU is refused before the DiT loads, naming the mode that needs less."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from longcat_jax.errors import ConfigError
from longcat_jax.memory.device import DeviceMemory
from longcat_jax.memory.footprint import dit_weights
from longcat_jax.training.config import DataConfig, TrainConfig, TrainingConfig
from longcat_jax.training.remat_memory import (
    block_backward_bytes,
    check_remat_fits,
    kept_attention_bytes,
    kept_block_input_bytes,
    lora_state_bytes,
    max_clip_tokens,
    remat_bytes,
)
from tests.memory.real_configs import DIT

GIB = 2**30
H100_AT_75_PERCENT = DeviceMemory(int(0.75 * 80 * GIB), "gpu", "a test's 80 GB GPU at JAX's default 75%")
ALL_OF_80_GIB = DeviceMemory(80 * GIB, "gpu", "a test's 80 GiB GPU, all of it")
AN_80_GB_CARD_AT_95_PERCENT = DeviceMemory(int(0.95 * 79.6 * GIB), "gpu", "a test's 80 GB card (79.6 GiB) at 95%")
H200_AT_75_PERCENT = DeviceMemory(int(0.75 * 139 * GIB), "gpu", "a test's H200 at JAX's default 75%")
TOKENS_480P = 24 * 30 * 52  # 93 frames at 480x832
TOKENS_720P_SPATIAL = 24 * 44 * 80


def _config(remat: str, batch: int = 1, quantize: str = "none") -> TrainConfig:
    return TrainConfig(data=DataConfig(folder=Path("clips")), quantize=quantize,
                       training=dataclasses.replace(TrainingConfig(), remat=remat, batch_size=batch))


def _need_gib(remat: str, tokens: int, quantize: str = "none") -> float:
    config = _config(remat)
    return (dit_weights(DIT, quantize=quantize).total + lora_state_bytes(DIT, config.lora.modules, 128)
            + remat_bytes(DIT, tokens, remat)) / GIB


def test_the_counted_bytes_are_the_documented_ones():
    # README and remat.py: 48 x N x 8,320 bytes, 13.9 GiB at 480p; the LoRA (rank 128, attention + FFN) and its
    # AdamW state measured 2.26 + 4.51 GiB on an H200 (BENCHMARKS.md), which with its gradients is 4 copies.
    assert kept_attention_bytes(DIT, TOKENS_480P) == 48 * TOKENS_480P * 8320
    assert round(kept_attention_bytes(DIT, TOKENS_480P) / GIB, 1) == 13.9
    assert round(lora_state_bytes(DIT, _config("block").lora.modules, 128) / 4 / GIB, 2) == 2.26
    assert max_clip_tokens([(24, 60, 104), (24, 88, 160)]) == TOKENS_720P_SPATIAL
    # remat_memory's docstring: the block inputs and one block's backward at 84,480 tokens
    assert round(kept_block_input_bytes(DIT, TOKENS_720P_SPATIAL) / GIB, 1) == 30.9
    assert round(block_backward_bytes(DIT, TOKENS_720P_SPATIAL, "block") / GIB, 1) == 23.2
    assert round(block_backward_bytes(DIT, TOKENS_720P_SPATIAL, "block_and_sublayers") / GIB, 1) == 19.0


def test_the_estimates_match_the_measured_steps():
    # 480p with the attention kept peaked at 71.4 GiB on an H200 (BENCHMARKS.md); the 720p BSA step under "block"
    # needed 54.47 GiB of XLA temporaries beside 25.3 GiB of weights (its OOM on an H200). The estimate counts the
    # LoRA's gradients apart from the temporaries (they are among them), so it may exceed a measurement by 2.3 GiB.
    assert 71.4 <= _need_gib("block_keep_attention", TOKENS_480P) <= 71.4 + 2.3
    measured_720p = (dit_weights(DIT).total + 54.47 * GIB) / GIB
    assert measured_720p <= _need_gib("block", TOKENS_720P_SPATIAL) <= measured_720p + 9.1  # + LoRA state 9.0
    # The whole 720p BSA step on an H200: "block_and_sublayers" 83.1 GiB (bf16 weights), 72.1 GiB (INT8); "block"
    # 76.2 GiB (INT8).
    for mode, quantize, measured in (("block_and_sublayers", "none", 83.1), ("block_and_sublayers", "int8", 72.1),
                                     ("block", "int8", 76.2)):
        assert measured <= _need_gib(mode, TOKENS_720P_SPATIAL, quantize) <= measured + 2.3


def test_720p_needs_a_quantized_base_to_fit_80_gib():
    with pytest.raises(ConfigError, match=r"'training.remat' \"block\".*\"block_and_sublayers\""):
        check_remat_fits(_config("block"), DIT, TOKENS_720P_SPATIAL, ALL_OF_80_GIB)
    check_remat_fits(_config("block", quantize="int8"), DIT, TOKENS_720P_SPATIAL, ALL_OF_80_GIB)  # 76.2 measured
    with pytest.raises(ConfigError, match="block_and_sublayers"):  # 95% of an 80 GB card's 79.6 GiB
        check_remat_fits(_config("block", quantize="int8"), DIT, TOKENS_720P_SPATIAL, AN_80_GB_CARD_AT_95_PERCENT)
    with pytest.raises(ConfigError, match="int8"):  # bf16 weights: 83.1 GiB measured
        check_remat_fits(_config("block_and_sublayers"), DIT, TOKENS_720P_SPATIAL, ALL_OF_80_GIB)
    check_remat_fits(_config("block_and_sublayers", quantize="int8"), DIT, TOKENS_720P_SPATIAL, ALL_OF_80_GIB)
    with pytest.raises(ConfigError, match="fsdp"):  # JAX's default 75% of an 80 GB GPU: no mode fits
        check_remat_fits(_config("block_and_sublayers", quantize="int8"), DIT, TOKENS_720P_SPATIAL,
                         H100_AT_75_PERCENT)
    for mode in ("block", "block_and_sublayers"):
        check_remat_fits(_config(mode), DIT, TOKENS_720P_SPATIAL, H200_AT_75_PERCENT)


def test_keep_attention_is_refused_where_it_cannot_fit():
    with pytest.raises(ConfigError, match=r"'training.remat' \"block_keep_attention\".*\"block\""):
        check_remat_fits(_config("block_keep_attention"), DIT, TOKENS_720P_SPATIAL, ALL_OF_80_GIB)
    check_remat_fits(_config("block_keep_attention"), DIT, TOKENS_480P, ALL_OF_80_GIB)
    with pytest.raises(ConfigError, match="batch 2"):  # the activations grow with the batch
        check_remat_fits(_config("block_keep_attention", batch=2), DIT, TOKENS_480P, ALL_OF_80_GIB)


def test_none_the_cpu_and_meshes_are_not_checked():
    small = DeviceMemory(GIB, "gpu", "a test's small GPU")
    check_remat_fits(_config("none"), DIT, TOKENS_720P_SPATIAL, small)
    check_remat_fits(_config("block"), DIT, TOKENS_720P_SPATIAL, DeviceMemory(GIB, "cpu", "a test's CPU"))
    check_remat_fits(_config("block"), DIT, TOKENS_720P_SPATIAL, small, devices=2)


def test_an_fp8_compute_base_counts_its_chunked_linears_and_names_the_weight_only_modes():
    # FP8 compute keeps 27 bytes per token and channel more in a block's backward (compile-only, remat_memory).
    extra = (block_backward_bytes(DIT, TOKENS_720P_SPATIAL, "block_and_sublayers", quantize="fp8")
             - block_backward_bytes(DIT, TOKENS_720P_SPATIAL, "block_and_sublayers", quantize="fp8-weight-only"))
    assert round(extra / GIB, 1) == 8.7
    assert block_backward_bytes(DIT, TOKENS_720P_SPATIAL, "block", quantize="int8") == block_backward_bytes(
        DIT, TOKENS_720P_SPATIAL, "block")
    with pytest.raises(ConfigError, match="fp8-weight-only"):
        check_remat_fits(_config("block_and_sublayers", quantize="fp8"), DIT, TOKENS_720P_SPATIAL, ALL_OF_80_GIB)
    check_remat_fits(_config("block_and_sublayers", quantize="fp8-weight-only"), DIT, TOKENS_720P_SPATIAL,
                     ALL_OF_80_GIB)
