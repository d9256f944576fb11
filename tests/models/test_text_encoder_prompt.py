"""encode_prompt: DiT layout, negative prompts, consistency with the encoder, releasing device memory."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from longcat_jax.errors import InputError, LongCatError
from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.text_encoder.loading import random_text_encoder
from longcat_jax.models.text_encoder.prompt import encode_prompt, is_released, release_text_encoder
from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer

LENGTH = 24


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _encoder(vocab_size=192):
    config = UMT5Config(vocab_size=vocab_size, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4)
    return random_text_encoder(config, seed=0)


def test_layout_and_values_match_the_encoder(tokenizer):
    encoder = _encoder()
    prompts = ["A cat walks across a sunny kitchen floor.", "A red car at sunset."]
    result = encode_prompt(encoder, tokenizer, prompts, "blurry, low quality", max_length=LENGTH)
    assert result.embeddings.shape == result.negative_embeddings.shape == (2, 1, LENGTH, 16)
    assert result.mask.shape == result.negative_mask.shape == (2, LENGTH)
    assert result.mask.dtype == jnp.int32
    tokens = tokenizer(prompts, max_length=LENGTH)
    np.testing.assert_array_equal(result.mask, tokens.attention_mask)
    direct = encoder(jnp.asarray(tokens.input_ids), jnp.asarray(tokens.attention_mask))
    chex.assert_trees_all_close(result.embeddings[:, 0], direct, atol=1e-5, rtol=1e-5)
    # one negative prompt for all: both rows identical
    chex.assert_trees_all_close(result.negative_embeddings[0], result.negative_embeddings[1], atol=1e-6)
    np.testing.assert_array_equal(result.negative_mask[0], result.negative_mask[1])


def test_without_negative_prompt_and_cast(tokenizer):
    result = encode_prompt(_encoder(), tokenizer, "a dog jumps into a lake", max_length=LENGTH, dtype=jnp.bfloat16)
    assert result.embeddings.shape == (1, 1, LENGTH, 16) and result.embeddings.dtype == jnp.bfloat16
    assert result.negative_embeddings is None and result.negative_mask is None


def test_negative_prompt_count_must_match(tokenizer):
    with pytest.raises(InputError, match="2 negative prompts for 3 prompts"):
        encode_prompt(_encoder(), tokenizer, ["a", "b", "c"], ["x", "y"], max_length=LENGTH)
    with pytest.raises(InputError, match="empty"):
        encode_prompt(_encoder(), tokenizer, [], max_length=LENGTH)


def test_tokenizer_outside_vocabulary_is_refused(tokenizer):
    with pytest.raises(InputError, match="outside the text encoder's vocabulary"):
        encode_prompt(_encoder(vocab_size=8), tokenizer, "a cat walks", max_length=LENGTH)


def test_release_frees_parameters(tokenizer):
    encoder = _encoder()
    kernel = encoder.layers[0].attention.query.kernel.get_value()
    result = encode_prompt(encoder, tokenizer, "a cat", "", max_length=LENGTH, release_encoder=True)
    assert kernel.is_deleted() and is_released(encoder)
    assert np.isfinite(np.asarray(result.embeddings)).all()
    with pytest.raises(LongCatError, match="released"):
        encode_prompt(encoder, tokenizer, "a cat", max_length=LENGTH)
    release_text_encoder(encoder)  # releasing twice is harmless
