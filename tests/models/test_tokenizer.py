"""Prompt tokenizer: cleaning, both tokenizer-folder formats, padding, truncation, missing files."""

import hashlib
import io
import logging
import time

import numpy as np
import pytest
import sentencepiece
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from longcat_jax.errors import CheckpointError, InputError
from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer
from longcat_jax.models.text_encoder.tokenizer import clean_prompt, load_tokenizer

_SENTENCES = [
    "A golden retriever runs through fresh snow in a quiet forest.",
    "Waves crash against black rocks under a stormy grey sky.",
    "A little girl flies a red kite on a windy hill at sunset.",
    "Steam rises from a bowl of noodles on a wooden table.",
    "A man rides a bicycle through narrow streets of an old town.",
    "Lanterns float over a river during a night festival.",
]


@pytest.fixture(scope="module")
def spiece_folder(tmp_path_factory):
    """A `tokenizer/` folder holding only a umT5-style spiece.model trained here (pad 0, eos 1, unk 2)."""
    folder = tmp_path_factory.mktemp("tokenizer_spm")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.Train(
        sentence_iterator=iter(_SENTENCES),
        model_writer=model,
        model_type="unigram",
        vocab_size=64,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    return folder


@pytest.fixture(scope="module")
def json_folder(spiece_folder, tmp_path_factory):
    """The same vocabulary as a tokenizer.json (unigram, metaspace, `$A </s>`), like T5TokenizerFast's."""
    processor = sentencepiece.SentencePieceProcessor(model_file=str(spiece_folder / "spiece.model"))
    vocab = [(processor.IdToPiece(i), processor.GetScore(i)) for i in range(processor.GetPieceSize())]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=processor.unk_id()))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", processor.eos_id())]
    )
    folder = tmp_path_factory.mktemp("tokenizer_json")
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  a  red\n\tcar \u3000 drives  ", "a red car drives"),
        ("fish &amp;amp; chips &lt;b&gt;", "fish & chips <b>"),
        ("The cafÃ© is open", "The café is open"),
        ("", ""),
    ],
)
def test_clean_prompt(raw, clean):
    assert clean_prompt(raw) == clean


@pytest.mark.parametrize("folder_fixture", ["spiece_folder", "json_folder"])
def test_pads_to_max_length_with_mask_and_eos(folder_fixture, request, spiece_folder):
    tokenizer = load_tokenizer(request.getfixturevalue(folder_fixture))
    batch = tokenizer(["A red kite  flies over the snow. ", "  "])
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 512)
    assert batch.input_ids.dtype == np.int32
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(spiece_folder / "spiece.model"))
    expected = pieces.EncodeAsIds("A red kite flies over the snow.") + [1]  # cleaned text, then </s>
    length = int(batch.attention_mask[0].sum())
    assert length == len(expected)
    np.testing.assert_array_equal(batch.input_ids[0, :length], expected)
    np.testing.assert_array_equal(batch.attention_mask[0, :length], 1)
    np.testing.assert_array_equal(batch.input_ids[0, length:], 0)  # <pad>
    np.testing.assert_array_equal(batch.attention_mask[0, length:], 0)
    # an empty prompt still gives the end token, as in the original
    assert batch.attention_mask[1].sum() == 1 and batch.input_ids[1, 0] == 1


def test_both_formats_give_the_same_ids(spiece_folder, json_folder):
    prompts = [*_SENTENCES, "A quiet forest, fresh snow; red kite!"]
    from_spm = load_tokenizer(spiece_folder)(prompts, max_length=40)
    from_json = load_tokenizer(json_folder)(prompts, max_length=40)
    np.testing.assert_array_equal(from_spm.input_ids, from_json.input_ids)
    np.testing.assert_array_equal(from_spm.attention_mask, from_json.attention_mask)


def test_tokenizer_json_is_preferred(spiece_folder, json_folder, tmp_path):
    both = tmp_path / "tokenizer"
    both.mkdir()
    (both / "spiece.model").write_bytes((spiece_folder / "spiece.model").read_bytes())
    (both / "tokenizer.json").write_bytes((json_folder / "tokenizer.json").read_bytes())
    assert load_tokenizer(both).source.name == "tokenizer.json"


@pytest.mark.parametrize("folder_fixture", ["spiece_folder", "json_folder"])
def test_truncates_long_prompt_with_warning(folder_fixture, request, caplog):
    tokenizer = load_tokenizer(request.getfixturevalue(folder_fixture))
    long_prompt = " ".join(_SENTENCES * 40) + " THE END MARKER"
    with caplog.at_level(logging.WARNING, logger="longcat_jax.models.text_encoder.tokenizer"):
        batch = tokenizer(["short one", long_prompt])
    assert batch.attention_mask[1].sum() == 512
    assert batch.input_ids[1, -1] == 1  # the end token survives truncation
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Prompt 1 is longer than 512 tokens" in warnings[0].getMessage()
    # the kept part is exactly the first 511 tokens of the untruncated encoding
    full = tokenizer([long_prompt], max_length=4096)
    np.testing.assert_array_equal(batch.input_ids[1, :511], full.input_ids[0, :511])


@pytest.mark.parametrize("folder_fixture", ["spiece_folder", "json_folder"])
def test_truncation_warning_names_the_dropped_text(folder_fixture, request, caplog):
    tokenizer = load_tokenizer(request.getfixturevalue(folder_fixture))
    with caplog.at_level(logging.WARNING, logger="longcat_jax.models.text_encoder.tokenizer"):
        tokenizer(["Lanterns float over a river during a night festival."], max_length=6)
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "night festival." in record.getMessage() and "Lanterns" not in record.getMessage()


def test_prompt_at_the_limit_is_not_truncated(spiece_folder, caplog):
    tokenizer = load_tokenizer(spiece_folder)
    prompt = _SENTENCES[0]
    exact = int(tokenizer([prompt], max_length=128).attention_mask.sum())
    with caplog.at_level(logging.WARNING):
        batch = tokenizer([prompt], max_length=exact)
    assert batch.attention_mask.sum() == exact
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_missing_or_broken_tokenizer_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer folder .* not found"):
        load_tokenizer(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="neither tokenizer.json nor spiece.model"):
        load_tokenizer(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a readable sentencepiece model"):
        load_tokenizer(broken)
    (broken / "tokenizer.json").write_text("{")
    with pytest.raises(CheckpointError, match="not a readable tokenizer.json"):
        load_tokenizer(broken)


def test_tokenizer_json_without_end_token_is_refused(json_folder, tmp_path):
    """A tokenizer.json whose post-processor is gone would silently drop the </s> every prompt ends with."""
    tokenizer = Tokenizer.from_file(str(json_folder / "tokenizer.json"))
    tokenizer.post_processor = None
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="no end-of-sequence token"):
        load_tokenizer(folder)


def test_bad_arguments(spiece_folder):
    tokenizer = load_tokenizer(spiece_folder)
    with pytest.raises(InputError):
        tokenizer("one string")
    with pytest.raises(InputError):
        tokenizer(["x"], max_length=1)


def test_tiny_tokenizer_is_quick_and_deterministic(tmp_path):
    start = time.perf_counter()
    tokenizer = build_tiny_tokenizer(tmp_path / "a")
    assert time.perf_counter() - start < 2.0
    build_tiny_tokenizer(tmp_path / "b")
    digest = [hashlib.sha256((tmp_path / d / "spiece.model").read_bytes()).hexdigest() for d in "ab"]
    assert digest[0] == digest[1]
    assert tokenizer.vocab_size == 192 and tokenizer.pad_id == 0
    batch = tokenizer(["A cat walks across a sunny kitchen floor."], max_length=32)
    length = int(batch.attention_mask.sum())
    assert batch.input_ids[0, length - 1] == 1
    assert int(batch.input_ids.max()) < tokenizer.vocab_size
    # loads again through the ordinary path, as the CLI's tokenizer/ folder would
    np.testing.assert_array_equal(load_tokenizer(tmp_path / "a")(["a cat"]).input_ids, tokenizer(["a cat"]).input_ids)
