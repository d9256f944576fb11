"""The weight counts match the built models; the activation estimates move the way the plan relies on."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax.checkpoint.param_tree import abstract_model
from longcat_jax.memory import footprint
from longcat_jax.memory.footprint import (
    DiTCall,
    dit_activations,
    dit_weights,
    quantized_lora_bytes,
    text_encoder_weights,
    vae_activations,
)
from longcat_jax.models.dit.layers import LoRAAdapter
from longcat_jax.models.dit.quantized_linear import LORA_CHUNK_ROWS, QuantizedLinear, quantize_linears, token_chunks
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.models.text_encoder.umt5 import UMT5Encoder
from longcat_jax.presets import TINY_DIT_CONFIG, TINY_TEXT_CONFIG, TINY_VAE_CONFIG
from longcat_jax.quantization import SCHEMES, compiler_options_for
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


def _activations(tokens_grid, chunk=None, platform="gpu", quantize=None, **call):
    return dit_activations(DIT, DiTCall(1, tokens_grid, 512, **call), act_bytes=2, chunk_tokens=chunk,
                           platform=platform, quantize=quantize)


def test_dit_activations_grow_with_the_tokens_and_shrink_with_chunks():
    grid = (48, 44, 80)
    assert _activations((24, 44, 80)) < _activations(grid)
    assert _activations(grid, chunk=8192) <= _activations(grid, chunk=32768) < _activations(grid)
    assert _activations(grid, chunk=8192, lora=True) > _activations(grid, chunk=8192)


def test_a_quantized_linear_with_loras_keeps_one_chunk_of_float32_results():
    """FP8: two float32 [rows, out] (the GEMM's and the LoRAs') and the e4m3 rows the GEMM reads; weight-only: one
    joined GEMM's float32 result and its joined input copy. Over one chunk of at most LORA_CHUNK_ROWS rows: the same
    for 168,960 and 84,480 tokens (chunks of 28,160), all rows when fewer."""
    c, fp8, int8 = DIT.hidden_size, SCHEMES["fp8"], SCHEMES["int8"]
    rows = token_chunks(1, 168960, LORA_CHUNK_ROWS)[1]
    assert rows == token_chunks(1, 84480, LORA_CHUNK_ROWS)[1] == 28160
    for tokens in (168960, 84480):
        assert quantized_lora_bytes(fp8, 1, tokens, c, 3 * c, 2) == rows * (2 * 4 * 3 * c + 1 * c)  # e4m3 rows
        assert quantized_lora_bytes(int8, 1, tokens, c, 3 * c, 2) == rows * (4 * 3 * c + 2 * c)  # bf16 rows
    assert quantized_lora_bytes(fp8, 2, 10000, c, c, 2) == 2 * 10000 * (2 * 4 * c + c)


def test_quantized_loras_are_counted_by_the_chunk_not_by_the_token(monkeypatch):
    grid = (48, 44, 80)  # the 720p refinement
    # Without LoRAs the quantized count is the bf16 one (a measured FP8 step under 24 GiB stayed below it: the
    # footprint module's docstring); with them it differs from the bf16 Linear's input copy.
    assert _activations(grid, quantize="fp8") == _activations(grid)
    chunked = _activations(grid, quantize="fp8", lora=True)
    assert chunked != _activations(grid, lora=True)
    # The earlier form, both float32 results over all tokens, is what the count would be without chunks.
    monkeypatch.setattr(footprint, "LORA_CHUNK_ROWS", 10**9)
    whole = _activations(grid, quantize="fp8", lora=True)
    assert whole - chunked > 10 * 2**30


def _quantized_block_temporaries(grid, quantize: str, chunk_rows: int, rank: int = 128) -> int:
    """XLA's temporary bytes of one real-size DiT block, its Linears quantized with `quantize` and each carrying a
    rank-`rank` LoRA, multiplying `chunk_rows` rows at a time, at token `grid` with BSA (compiled only)."""
    config = dataclasses.replace(DIT, depth=1, enable_bsa=True)
    bf16 = jnp.bfloat16

    def make():
        dit = quantize_linears(LongCatDiT(config, rngs=nnx.Rngs(0), dtype=bf16, param_dtype=bf16), quantize)
        for _, module in nnx.iter_modules(dit):
            if isinstance(module, QuantizedLinear):
                module.loras = nnx.List([LoRAAdapter(jnp.zeros((module.in_features, rank)),
                                                     jnp.zeros((rank, module.out_features)), 1.0, dtype=bf16,
                                                     param_dtype=bf16)])
                module.lora_chunk_rows = chunk_rows
        return dit

    dit = nnx.eval_shape(make)
    graphdef, state = nnx.split(dit.blocks[0])
    n = math.prod(grid)
    args = (jax.ShapeDtypeStruct((1, n, config.hidden_size), bf16),
            jax.ShapeDtypeStruct((1, 512, config.hidden_size), bf16),
            jax.ShapeDtypeStruct((1, grid[0], config.adaln_tembed_dim), jnp.float32))

    def block(state, x, text, t_emb):
        return nnx.merge(graphdef, state)(x, text, None, t_emb, grid, bsa=dit.bsa, bsa_backend=dit.bsa_backend)[0]

    jitted = jax.jit(block, donate_argnums=(1,), compiler_options=compiler_options_for(state))
    return jitted.lower(state, *args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.gpu
def test_a_quantized_block_with_loras_stays_within_its_count_on_a_gpu():
    """XLA's temporaries of one FP8 block with LoRAs at the 720p refinement's 168,960 tokens (BSA, all tokens at
    once, as the 24 GiB plan runs it) stay within `dit_activations` for one block, and are well below those of the
    earlier form (the GEMM's and the LoRA's float32 results over all tokens: 15.5 GiB for qkv alone)."""
    grid = (48, 44, 80)
    estimate = dit_activations(dataclasses.replace(DIT, depth=1), DiTCall(1, grid, 512, BSA, lora=True),
                               act_bytes=2, chunk_tokens=None, platform="gpu", quantize="fp8")
    chunked = _quantized_block_temporaries(grid, "fp8", LORA_CHUNK_ROWS)
    assert chunked <= estimate, (chunked / 2**30, estimate / 2**30)
    whole = _quantized_block_temporaries(grid, "fp8", 10**9)
    assert whole - chunked > 5 * 2**30, (whole / 2**30, chunked / 2**30)


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
