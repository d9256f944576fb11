"""Prompt encoding for the DiT: UMT5 hidden states and masks in the layout the DiT takes.

As in the original pipeline, each prompt is cleaned, tokenized to exactly `max_length` tokens
(padded, with a 0/1 mask) and encoded; the embeddings are the encoder's `last_hidden_state`
including the (meaningless) padded positions, shaped [B, 1, L, C], and the mask is [B, L].
The DiT zeroes or drops the padded positions itself. Positive and negative prompts go through
the encoder in one batch, since padding makes every row the same length.

The encoder runs once per generation and is then dead weight: `release_text_encoder` frees its
device memory so the DiT has the room (the real UMT5-XXL holds about 11 GB in bfloat16).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from longcat_jax.errors import InputError, LongCatError
from longcat_jax.models.text_encoder.tokenizer import DEFAULT_MAX_LENGTH, PromptTokenizer
from longcat_jax.models.text_encoder.umt5 import UMT5Encoder, run_encoder

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EncodedPrompts:
    """Text conditioning for the DiT; the negative fields are None when no negative prompt was given."""

    embeddings: jax.Array  # [B, 1, L, C]
    mask: jax.Array  # int32 [B, L]
    negative_embeddings: jax.Array | None = None  # [B, 1, L, C]
    negative_mask: jax.Array | None = None  # int32 [B, L]


def _as_list(prompts: str | Sequence[str], what: str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InputError(f"{what}: got an empty list")
    return prompts


def encode_prompt(
    encoder: UMT5Encoder,
    tokenizer: PromptTokenizer,
    prompts: str | Sequence[str],
    negative_prompts: str | Sequence[str] | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    *,
    dtype=None,
    release_encoder: bool = False,
) -> EncodedPrompts:
    """Encodes `prompts` (and `negative_prompts`, one string for all or one per prompt).

    Returns embeddings [B, 1, max_length, C] (in `dtype`, default: the encoder's dtype) and int32
    masks [B, max_length]. Pass `negative_prompts=""` for classifier-free guidance with the
    original's default empty negative prompt. The results live where the encoder's weights do
    (move them with `jax.device_put` if the encoder ran on the CPU). With `release_encoder=True`
    the encoder's device memory is freed once the embeddings are computed (the encoder cannot be
    used again).
    """
    if is_released(encoder):
        raise LongCatError("this text encoder was released; load it again to encode more prompts")
    positives = _as_list(prompts, "prompts")
    negatives: list[str] = []
    if negative_prompts is not None:
        negatives = _as_list(negative_prompts, "negative_prompts")
        if len(negatives) == 1 and len(positives) > 1:
            negatives = negatives * len(positives)
        if len(negatives) != len(positives):
            raise InputError(
                f"got {len(negatives)} negative prompts for {len(positives)} prompts; "
                "give one negative prompt for all or one per prompt"
            )
    tokens = tokenizer(positives + negatives, max_length=max_length)
    vocab = encoder.config.vocab_size
    if int(tokens.input_ids.max()) >= vocab:
        raise InputError(
            f"the tokenizer ({tokenizer.source}) produced token id {int(tokens.input_ids.max())}, "
            f"outside the text encoder's vocabulary of {vocab}; do the tokenizer and text_encoder belong together?"
        )
    hidden = run_encoder(encoder, jnp.asarray(tokens.input_ids), jnp.asarray(tokens.attention_mask))
    hidden = hidden.astype(dtype or encoder.dtype)[:, None]  # [2B or B, 1, L, C]
    mask = jnp.asarray(tokens.attention_mask)
    if release_encoder:
        hidden.block_until_ready()
        release_text_encoder(encoder)
    count = len(positives)
    if not negatives:
        return EncodedPrompts(embeddings=hidden, mask=mask)
    return EncodedPrompts(
        embeddings=hidden[:count],
        mask=mask[:count],
        negative_embeddings=hidden[count:],
        negative_mask=mask[count:],
    )


def release_text_encoder(encoder: UMT5Encoder) -> None:
    """Frees the device buffers of all the encoder's parameters now, not when Python collects them."""
    released = 0
    for _, variable in nnx.to_flat_state(nnx.state(encoder)):
        value = variable.get_value()
        if isinstance(value, jax.Array) and not value.is_deleted():
            released += value.nbytes
            value.delete()
    logger.info("Released the text encoder's %.2f GiB of parameters", released / 2**30)


def is_released(encoder: UMT5Encoder) -> bool:
    """True once `release_text_encoder` has freed the encoder's parameters."""
    return any(
        isinstance(v.get_value(), jax.Array) and v.get_value().is_deleted()
        for _, v in nnx.to_flat_state(nnx.state(encoder))
    )
