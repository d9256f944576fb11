"""The umT5 tokenizer of a checkpoint's `tokenizer/` folder, with the original prompt cleaning.

LongCat tokenizes every prompt like its reference pipeline: clean the text (ftfy, HTML unescape
twice, whitespace collapsed), add the end-of-sequence token, truncate to `max_length` tokens
(the end token kept) and pad to exactly `max_length` with the pad id, returning a 0/1 mask.

The folder's `tokenizer.json` is read with Hugging Face `tokenizers` when present (its
post-processor adds `</s>`), otherwise `spiece.model` with `sentencepiece` (we add the eos id).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import ftfy
import numpy as np

from longcat_jax.errors import CheckpointError, InputError

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 512
TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "spiece.model"
_PAD_TOKEN = "<pad>"


def clean_prompt(text: str) -> str:
    """The original prompt cleaning: fix mojibake, unescape HTML twice, collapse whitespace, strip."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    """Token ids and mask of a batch of prompts, padded to one length."""

    input_ids: np.ndarray  # int32 [B, L]
    attention_mask: np.ndarray  # int32 [B, L], 1 for tokens (end token included), 0 for padding


class _TokenizersBackend:
    """`tokenizer.json` through Hugging Face `tokenizers`; specials come from its post-processor."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises bare Exception subclasses on malformed files
            raise CheckpointError(f"{path} is not a readable tokenizer.json ({e}); download it again") from e
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        pad_id = self._tokenizer.token_to_id(_PAD_TOKEN)
        if pad_id is None:
            raise CheckpointError(f"{path} has no {_PAD_TOKEN} token; it is not a umT5 tokenizer")
        self.pad_id = pad_id
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.num_special = self._tokenizer.num_special_tokens_to_add(is_pair=False)
        if self.num_special < 1:
            raise CheckpointError(
                f"{path} appends no end-of-sequence token (no post_processor), so prompts would lack the "
                f"</s> the text encoder was trained with; use the checkpoint's own tokenizer.json or {SENTENCEPIECE_MODEL}"
            )

    def encode(self, text: str, max_length: int) -> tuple[list[int], str]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        dropped = ""
        budget = max_length - self.num_special
        if len(encoding.ids) > budget:
            dropped = self._tokenizer.decode(encoding.ids[budget:])
            encoding.truncate(budget)
        return self._tokenizer.post_process(encoding).ids, dropped


class _SentencePieceBackend:
    """`spiece.model` through `sentencepiece`; the end-of-sequence id is appended here."""

    num_special = 1

    def __init__(self, path: Path):
        import sentencepiece

        self._model = sentencepiece.SentencePieceProcessor()
        try:
            self._model.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{path} is not a readable sentencepiece model ({e}); download it again") from e
        self.pad_id = self._model.pad_id()
        self.eos_id = self._model.eos_id()
        if self.pad_id < 0 or self.eos_id < 0:
            raise CheckpointError(f"{path} defines no pad or end-of-sequence id; it is not a umT5 tokenizer")
        self.vocab_size = self._model.GetPieceSize()

    def encode(self, text: str, max_length: int) -> tuple[list[int], str]:
        ids = self._model.EncodeAsIds(text)
        dropped = ""
        budget = max_length - self.num_special
        if len(ids) > budget:
            dropped = self._model.DecodeIds(ids[budget:])
            ids = ids[:budget]
        return ids + [self.eos_id], dropped


class PromptTokenizer:
    """Cleans, tokenizes, truncates and pads prompts the way the original LongCat pipeline does."""

    def __init__(self, backend: _TokenizersBackend | _SentencePieceBackend, source: Path):
        self._backend = backend
        self.source = source

    @property
    def pad_id(self) -> int:
        return self._backend.pad_id

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce (the encoder's vocabulary must cover them)."""
        return self._backend.vocab_size

    def __call__(self, prompts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH) -> TokenBatch:
        """Tokenizes `prompts` (already a list; each cleaned here) into a [B, max_length] batch."""
        if isinstance(prompts, str):
            raise InputError("PromptTokenizer takes a list of prompts, not one string")
        if max_length <= self._backend.num_special:
            raise InputError(f"max_length must exceed {self._backend.num_special} special token(s), got {max_length}")
        ids = np.full((len(prompts), max_length), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(prompts), max_length), dtype=np.int32)
        for row, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise InputError(f"prompt {row} is {type(prompt).__name__}, not a string")
            tokens, dropped = self._backend.encode(clean_prompt(prompt), max_length)
            if dropped:
                logger.warning(
                    "Prompt %d is longer than %d tokens and was truncated; this part is ignored: %r",
                    row,
                    max_length,
                    dropped if len(dropped) <= 200 else dropped[:200] + "...",
                )
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return TokenBatch(input_ids=ids, attention_mask=mask)


def load_tokenizer(folder: str | Path) -> PromptTokenizer:
    """Loads the checkpoint's `tokenizer/` folder: `tokenizer.json` if present, else `spiece.model`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"tokenizer folder {folder} not found; pass the checkpoint's tokenizer/ folder "
            f"(it holds {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL})"
        )
    if (folder / TOKENIZER_JSON).is_file():
        backend = _TokenizersBackend(folder / TOKENIZER_JSON)
        source = folder / TOKENIZER_JSON
    elif (folder / SENTENCEPIECE_MODEL).is_file():
        backend = _SentencePieceBackend(folder / SENTENCEPIECE_MODEL)
        source = folder / SENTENCEPIECE_MODEL
    else:
        raise CheckpointError(
            f"{folder} holds neither {TOKENIZER_JSON} nor {SENTENCEPIECE_MODEL}; "
            "download the checkpoint's tokenizer/ folder again"
        )
    logger.info("Loaded tokenizer %s (%d tokens)", source, backend.vocab_size)
    return PromptTokenizer(backend, source)
