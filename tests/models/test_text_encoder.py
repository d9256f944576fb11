"""UMT5 encoder: relative position buckets, masking, and parity with the original on the fixture model."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.text_encoder.loading import load_text_encoder, random_text_encoder
from longcat_jax.models.text_encoder.umt5 import relative_position_buckets, run_encoder


def _t5_bucket(distance: int) -> int:
    """T5's bidirectional bucket for 32 buckets / max distance 128, in exact integer arithmetic.

    Within a half of 16 buckets, |d| < 8 is exact; otherwise 8 + floor(8 * log(|d|/8) / log(16))
    = 8 + floor(log2(d^2 / 64)), capped at 15; keys after the query use the upper half.
    """
    magnitude = abs(distance)
    if magnitude < 8:
        within = magnitude
    else:
        within = min(15, 8 + (magnitude * magnitude).bit_length() - 1 - 6)
    return within + (16 if distance > 0 else 0)


def test_relative_position_buckets_match_t5_rule():
    length = 700
    buckets = relative_position_buckets(length, length, num_buckets=32, max_distance=128)
    assert buckets.shape == (length, length) and buckets.dtype == np.int32
    query = 350
    for key in range(length):
        assert buckets[query, key] == _t5_bucket(key - query), (key - query, buckets[query, key])
    # depends only on the distance
    np.testing.assert_array_equal(buckets[1:, 1:], buckets[:-1, :-1])


def _fixture_case(fixtures_dir):
    cases = load_file(str(fixtures_dir / "pipeline_cases.safetensors"))
    return cases["t5.input_ids"], cases["t5.attention_mask"], cases["t5.last_hidden_state"]


@pytest.mark.parametrize(("dtype", "tol"), [(jnp.float32, 1e-4), (jnp.bfloat16, 2e-2)])
def test_matches_original_on_fixture(fixtures_dir, dtype, tol):
    input_ids, mask, expected = _fixture_case(fixtures_dir)
    encoder = load_text_encoder(fixtures_dir / "text_encoder", dtype=dtype)
    out = run_encoder(encoder, jnp.asarray(input_ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    out = np.asarray(out, np.float32)
    assert out.shape == expected.shape
    keep = mask.astype(bool)
    assert keep.sum() < keep.size, "the fixture should contain padding"
    rel = np.linalg.norm(out[keep] - expected[keep]) / np.linalg.norm(expected[keep])
    assert rel <= tol, rel
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


def _tiny_encoder(dtype=jnp.float32):
    config = UMT5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)
    return random_text_encoder(config, seed=3, dtype=dtype)


def test_padding_does_not_affect_tokens():
    """Real tokens give the same states whatever the padding holds and however long it is."""
    encoder = _tiny_encoder()
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 50, size=(1, 7))
    short = run_encoder(encoder, jnp.asarray(tokens), jnp.ones((1, 7), jnp.int32))
    padded_ids = np.concatenate([np.repeat(tokens, 2, axis=0), rng.integers(0, 50, size=(2, 13))], axis=1)
    padded_ids[1, 7:] = 0
    mask = np.zeros((2, 20), np.int32)
    mask[:, :7] = 1
    padded = run_encoder(encoder, jnp.asarray(padded_ids), jnp.asarray(mask))
    chex.assert_trees_all_close(padded[:, :7], jnp.broadcast_to(short, (2, 7, 32)), atol=1e-5, rtol=1e-5)


def test_each_layer_has_its_own_position_bias():
    encoder = _tiny_encoder()
    tokens, mask = jnp.asarray([[5, 6, 7, 8]]), jnp.ones((1, 4), jnp.int32)
    before = run_encoder(encoder, tokens, mask)
    table = encoder.layers[1].attention.relative_bias.embedding
    table.set_value(table.get_value() + jnp.arange(table.get_value().shape[0], dtype=jnp.float32)[:, None])
    after = run_encoder(encoder, tokens, mask)
    assert float(jnp.max(jnp.abs(after - before))) > 1e-3


def test_random_encoder_is_reproducible():
    first, second = _tiny_encoder(), _tiny_encoder()
    chex.assert_trees_all_equal(nnx.state(first), nnx.state(second))
    assert _tiny_encoder(jnp.bfloat16).layers[0].ffn.up.kernel.get_value().dtype == jnp.bfloat16


def test_bfloat16_output_is_close_to_float32():
    encoder32 = _tiny_encoder(jnp.float32)
    encoder16 = _tiny_encoder(jnp.bfloat16)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 50, size=(2, 16)))
    mask = jnp.ones((2, 16), jnp.int32)
    out16 = run_encoder(encoder16, tokens, mask)
    assert out16.dtype == jnp.bfloat16
    out32 = run_encoder(encoder32, tokens, mask)
    rel = jnp.linalg.norm(out16.astype(jnp.float32) - out32) / jnp.linalg.norm(out32)
    assert float(rel) < 2e-2


def test_run_encoder_matches_eager_and_keeps_parameters():
    encoder = _tiny_encoder()
    kernel = encoder.layers[0].ffn.down.kernel.get_value()
    tokens, mask = jnp.asarray([[1, 2, 3, 0]]), jnp.asarray([[1, 1, 1, 0]])
    chex.assert_trees_all_close(run_encoder(encoder, tokens, mask), encoder(tokens, mask), atol=1e-5, rtol=1e-5)
    assert encoder.layers[0].ffn.down.kernel.get_value() is kernel


def test_float16_saturates_instead_of_overflowing():
    encoder = _tiny_encoder(jnp.float16)
    up = encoder.layers[0].ffn.up.kernel
    up.set_value(up.get_value() * 3e4)  # feed-forward activations far beyond float16's 65504
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 50, size=(1, 8)))
    out = run_encoder(encoder, tokens, jnp.ones((1, 8), jnp.int32))
    assert out.dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(out)))


def test_parity_group_t5(fixtures_dir, tmp_path):
    from longcat_jax.parity import t5 as parity_t5

    (result,) = parity_t5.run(fixtures_dir, "float32")
    assert result.name == "t5.last_hidden_state" and result.status == "PASS", result
    assert result.rel_l2 <= result.tol == 1e-4
    (missing,) = parity_t5.run(tmp_path, "bfloat16")
    assert missing.status == "FAIL" and "not found" in missing.note
