"""The UMT5 text encoder of LongCat: config, model, name map from the original keys, loading, tokenizer
and prompt encoding for the DiT."""

from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.text_encoder.loading import load_text_encoder, random_text_encoder
from longcat_jax.models.text_encoder.prompt import EncodedPrompts, encode_prompt, release_text_encoder
from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer
from longcat_jax.models.text_encoder.tokenizer import PromptTokenizer, clean_prompt, load_tokenizer
from longcat_jax.models.text_encoder.umt5 import UMT5Encoder

__all__ = [
    "EncodedPrompts",
    "PromptTokenizer",
    "UMT5Config",
    "UMT5Encoder",
    "build_tiny_tokenizer",
    "clean_prompt",
    "encode_prompt",
    "load_text_encoder",
    "load_tokenizer",
    "random_text_encoder",
    "release_text_encoder",
]
