"""The weight counts match the built models; the activation estimates move the way the plan relies on."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax.checkpoint.param_tree import abstract_model
from longcat_jax.memory.footprint import DiTCall, dit_activations, dit_weights, text_encoder_weights, vae_activations
from longcat_jax.models.dit.quantized_linear import quantize_linears
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.models.text_encoder.umt5 import UMT5Encoder
from longcat_jax.presets import TINY_DIT_CONFIG, TINY_TEXT_CONFIG, TINY_VAE_CONFIG
from tests.memory.real_configs import BSA, DIT, VAE


def _bytes(make) -> int:
    _, _, shapes = abstract_model(make)
    return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in shapes.values())


@pytest.mark.parametrize("quantize", [None, "int8", "fp8"])
@pytest.mark.parametrize("config", [TINY_DIT_CONFIG, dataclasses.replace(DIT, depth=1)], ids=["tiny", "real_1_block"])
def test_dit_weight_bytes_match_the_built_model(config, quantize):
    counted = dit_weights(config, jnp.bfloat16, quantize)

    def built(depth: int) -> int:
        return _bytes(lambda: quantize_linears(LongCatDiT(dataclasses.replace(config, depth=depth), rngs=nnx.Rngs(0),
                                                          dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), quantize))

    one = built(1)
    assert counted.total == counted.ends + config.depth * counted.block
    assert built(2) - one == counted.block
    assert one - counted.block == counted.ends


def test_text_encoder_weight_bytes_match_the_built_model():
    built = _bytes(lambda: UMT5Encoder(TINY_TEXT_CONFIG, rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32))
    assert text_encoder_weights(TINY_TEXT_CONFIG, jnp.float32) == built


def test_quantized_weights_are_about_half():
    bf16, int8 = dit_weights(DIT, jnp.bfloat16), dit_weights(DIT, jnp.bfloat16, "int8")
    assert 0.5 < int8.total / bf16.total < 0.55  # adaLN, norms, embedders and biases stay bf16


def _activations(tokens_grid, chunk=None, platform="gpu", **call):
    return dit_activations(DIT, DiTCall(1, tokens_grid, 512, **call), act_bytes=2, chunk_tokens=chunk,
                           platform=platform)


def test_dit_activations_grow_with_the_tokens_and_shrink_with_chunks():
    grid = (48, 44, 80)
    assert _activations((24, 44, 80)) < _activations(grid)
    assert _activations(grid, chunk=8192) <= _activations(grid, chunk=32768) < _activations(grid)
    assert _activations(grid, chunk=8192, lora=True) > _activations(grid, chunk=8192)


def test_unfused_dense_attention_is_quadratic():
    """On the CPU dense attention keeps its scores: 4x the tokens, far more than 4x the memory; BSA's block scores
    and cuDNN's fused attention stay near linear."""
    small, large = (4, 30, 52), (16, 30, 52)
    assert _activations(large, platform="cpu") > 8 * _activations(small, platform="cpu")
    assert _activations(large, platform="gpu") < 5 * _activations(small, platform="gpu")
    assert _activations(large, platform="gpu", bsa=BSA) < 5 * _activations(small, platform="gpu", bsa=BSA)


def test_vae_tiles_need_less_than_whole_frames():
    args = dict(frames=93, height=704, width=1280, act_bytes=2)
    whole = vae_activations(VAE, tile=None, **args)
    assert vae_activations(VAE, tile=128, **args) < vae_activations(VAE, tile=256, **args) < whole
    tiny = vae_activations(TINY_VAE_CONFIG, tile=None, **args)
    assert tiny < whole  # narrower layers
