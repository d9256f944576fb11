"""The UMT5 encoder (umT5-XXL in LongCat) in flax.nnx.

A pre-norm transformer encoder in the T5 style: token embedding (not scaled), then per layer
RMS norm -> self-attention with a learned, bucketed relative position bias -> residual, and
RMS norm -> gated tanh-GELU feed-forward -> residual; a final RMS norm. Unlike T5, every UMT5
layer owns its relative position bias table. Attention logits are not scaled by 1/sqrt(d_kv)
(the T5 convention: the scale is folded into the trained query weights).

Precision: weights and the inputs of the projection matmuls use `dtype` (bfloat16 for the real
model), but those matmuls accumulate in float32, and the residual stream, the norm statistics
and the attention core (q k^T without scaling makes logits large; position bias, mask, softmax,
weights times v) stay in float32. The attention core is a small share of the FLOPs at 512 tokens;
keeping it in float32 makes bfloat16 runs lose less accuracy than the original's bfloat16 does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longcat_jax.models.text_encoder.config import UMT5Config


def relative_position_buckets(
    query_length: int, key_length: int, *, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Bidirectional T5 buckets of `key - query` distances: int32 [query_length, key_length].

    Half of the buckets are for keys after the query, half for keys at or before it. Within a
    half, distances below `num_buckets / 4` get one bucket each, larger ones share logarithmically
    wider buckets up to `max_distance`, beyond which all fall into the last bucket. The logarithm
    is taken in float32, as the original does, so bucket edges land on the same distances.
    """
    distance = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]  # [Lq, Lk]
    half = num_buckets // 2
    buckets = np.where(distance > 0, half, 0)
    distance = np.abs(distance)
    exact = half // 2
    far = np.maximum(distance, exact).astype(np.float32)  # the log branch is used only where distance >= exact
    log_ratio = np.log(far / np.float32(exact)) / np.float32(np.log(max_distance / exact))
    log_bucket = exact + (log_ratio * np.float32(half - exact)).astype(np.int64)
    log_bucket = np.minimum(log_bucket, half - 1)
    buckets = buckets + np.where(distance < exact, distance, log_bucket)
    return buckets.astype(np.int32)


def to_compute_dtype(x: jax.Array, dtype) -> jax.Array:
    """Casts float32 activations to the matmul dtype; for float16 it saturates instead of overflowing.

    T5-XXL's feed-forward activations exceed float16's range (the original clamps infinities in
    float16 for that reason); bfloat16 and float32 share float32's range and need no clamp.
    """
    if jnp.dtype(dtype) == jnp.float16:
        limit = float(jnp.finfo(jnp.float16).max)
        x = jnp.clip(x, -limit, limit)
    return x.astype(dtype)


class T5RMSNorm(nnx.Module):
    """Scale-only RMS normalization (no mean subtraction, no bias), statistics in float32."""

    def __init__(self, features: int, *, eps: float, dtype, param_dtype):
        self.scale = nnx.Param(jnp.ones((features,), dtype=param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        normed = x * jax.lax.rsqrt(variance + self.eps)
        return to_compute_dtype(normed * self.scale.get_value().astype(jnp.float32), self.dtype)


def _projection(fan_in: int, fan_out: int, *, rngs: nnx.Rngs, dtype, param_dtype) -> nnx.Linear:
    """A bias-free Linear (T5 has no biases) accumulating in float32 whatever the weight dtype."""
    return nnx.Linear(fan_in, fan_out, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                      preferred_element_type=jnp.float32, rngs=rngs)


class UMT5SelfAttention(nnx.Module):
    """Multi-head self-attention with this layer's own relative position bias; no logit scaling."""

    def __init__(self, config: UMT5Config, *, rngs: nnx.Rngs, dtype, param_dtype):
        self.config = config
        self.dtype = dtype

        projection = functools.partial(_projection, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

        self.query = projection(config.d_model, config.inner_dim)
        self.key = projection(config.d_model, config.inner_dim)
        self.value = projection(config.d_model, config.inner_dim)
        self.out = projection(config.inner_dim, config.d_model)
        self.relative_bias = nnx.Embed(
            config.relative_attention_num_buckets,
            config.num_heads,
            dtype=jnp.float32,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def position_bias(self, length: int) -> jax.Array:
        """The bias this layer adds to the attention logits: float32 [H, L, L]."""
        buckets = relative_position_buckets(
            length,
            length,
            num_buckets=self.config.relative_attention_num_buckets,
            max_distance=self.config.relative_attention_max_distance,
        )
        return jnp.transpose(self.relative_bias(jnp.asarray(buckets)), (2, 0, 1))

    def __call__(self, x: jax.Array, mask_bias: jax.Array) -> jax.Array:
        """x: [B, L, C] in `dtype`; mask_bias: float32 [B, 1, 1, L] (0 for tokens, very negative for padding)."""
        batch, length, _ = x.shape
        heads, head_dim = self.config.num_heads, self.config.d_kv
        q = self.query(x).reshape(batch, length, heads, head_dim)  # [B, L, H, D] f32
        k = self.key(x).reshape(batch, length, heads, head_dim)
        v = self.value(x).reshape(batch, length, heads, head_dim)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)  # [B, H, L, L]
        logits = logits + self.position_bias(length)[None] + mask_bias
        weights = jax.nn.softmax(logits, axis=-1)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, v)  # [B, L, H, D]
        context = to_compute_dtype(context, self.dtype).reshape(batch, length, heads * head_dim)
        return self.out(context)  # [B, L, C] f32


class GatedGeluFeedForward(nnx.Module):
    """gelu_tanh(x W_gate) * (x W_up), then W_down (T5 v1.1 `wi_0`, `wi_1`, `wo`)."""

    def __init__(self, config: UMT5Config, *, rngs: nnx.Rngs, dtype, param_dtype):
        self.dtype = dtype

        projection = functools.partial(_projection, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

        self.gate = projection(config.d_model, config.d_ff)
        self.up = projection(config.d_model, config.d_ff)
        self.down = projection(config.d_ff, config.d_model)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, L, C] in `dtype` -> float32 [B, L, C]."""
        hidden = jax.nn.gelu(self.gate(x), approximate=True) * self.up(x)  # [B, L, F] f32
        return self.down(to_compute_dtype(hidden, self.dtype))


class UMT5Layer(nnx.Module):
    """One encoder block: pre-norm self-attention and pre-norm gated FFN, each with a float32 residual."""

    def __init__(self, config: UMT5Config, *, rngs: nnx.Rngs, dtype, param_dtype):
        norm = dict(eps=config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype)
        self.attention_norm = T5RMSNorm(config.d_model, **norm)
        self.attention = UMT5SelfAttention(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.ffn_norm = T5RMSNorm(config.d_model, **norm)
        self.ffn = GatedGeluFeedForward(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, hidden: jax.Array, mask_bias: jax.Array) -> jax.Array:
        """hidden: float32 [B, L, C] residual stream -> float32 [B, L, C]."""
        hidden = hidden + self.attention(self.attention_norm(hidden), mask_bias)
        return hidden + self.ffn(self.ffn_norm(hidden))


class UMT5Encoder(nnx.Module):
    """UMT5 encoder stack: `last_hidden_state` [B, L, d_model] from token ids and their mask.

    Padding positions (mask 0) are never attended to; their own outputs are computed anyway and
    are meaningless, as in the original. The output is in `dtype`.
    """

    def __init__(self, config: UMT5Config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.config = config
        self.dtype = dtype
        self.token_embedding = nnx.Embed(
            config.vocab_size, config.d_model, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs
        )
        self.layers = nnx.List(
            [UMT5Layer(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype) for _ in range(config.num_layers)]
        )
        self.final_norm = T5RMSNorm(
            config.d_model, eps=config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype
        )

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """input_ids, attention_mask: integer [B, L] -> [B, L, d_model] in `dtype`."""
        hidden = self.token_embedding(input_ids)  # [B, L, C] f32
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        mask_bias = mask_bias.astype(jnp.float32)  # [B, 1, 1, L]
        for layer in self.layers:
            hidden = layer(hidden, mask_bias)
        return self.final_norm(hidden)


@functools.partial(jax.jit, static_argnums=0)
def _apply_compiled(graphdef: nnx.GraphDef, state: nnx.State, input_ids: jax.Array, attention_mask: jax.Array):
    return nnx.merge(graphdef, state)(input_ids, attention_mask)


def run_encoder(encoder: UMT5Encoder, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """`encoder(input_ids, attention_mask)` compiled once per shape, returning only the hidden states.

    Unlike `nnx.jit`, which hands every parameter back as a fresh output buffer (briefly doubling
    the 11 GB of UMT5-XXL weights), this passes the parameters in and nothing but the result out.
    """
    graphdef, state = nnx.split(encoder)
    return _apply_compiled(graphdef, state, input_ids, attention_mask)
