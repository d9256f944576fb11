"""The UMT5 text encoder of LongCat, its tokenizer and prompt encoding for the DiT."""

from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.text_encoder.loading import load_text_encoder
from longcat_jax.models.text_encoder.prompt import EncodedPrompts, encode_prompt, is_released, release_text_encoder
from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer
from longcat_jax.models.text_encoder.tokenizer import PromptTokenizer, TokenBatch, clean_prompt, load_tokenizer
from longcat_jax.models.text_encoder.umt5 import UMT5Encoder

__all__ = [
    "EncodedPrompts",
    "PromptTokenizer",
    "TokenBatch",
    "UMT5Config",
    "UMT5Encoder",
    "build_tiny_tokenizer",
    "clean_prompt",
    "encode_prompt",
    "is_released",
    "load_text_encoder",
    "load_tokenizer",
    "release_text_encoder",
]
