"""The UMT5 text encoder of LongCat, its tokenizer and prompt encoding for the DiT.

Public API (import from the submodules; this package imports nothing so that `convert/`, which
maps checkpoints onto these models, and `loading`, which uses `convert/`, can import each other):
`config.UMT5Config`, `umt5.UMT5Encoder`, `loading.load_text_encoder`,
`tokenizer.load_tokenizer` / `PromptTokenizer` / `clean_prompt`, `tiny_tokenizer.build_tiny_tokenizer`,
`prompt.encode_prompt` / `EncodedPrompts` / `release_text_encoder`.
"""
