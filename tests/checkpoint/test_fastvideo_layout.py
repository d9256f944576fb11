"""FastVideo's folder layout (`transformer/` for `dit/`, `lora/distilled/`, `lora/refinement/`): found by the layout
functions, downloaded by the hub patterns, and loaded whole by `LongCatPipeline.from_pretrained` into the same
pipeline as the original folder (every weight equal; the DiT's output is compared in tests/models/test_fastvideo_dit.py)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longcat_jax.checkpoint.hub import CHECKPOINT_PATTERNS
from longcat_jax.checkpoint.layout import (
    DISTILL_LORA,
    REFINE_LORA,
    check_checkpoint,
    dit_folder,
    lora_path,
    lora_sources,
    missing_parts,
)
from longcat_jax.errors import CheckpointError
from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer
from longcat_jax.pipelines.pipeline import LongCatPipeline
from tests.helpers.fastvideo_checkpoint import write_fastvideo_checkpoint


@pytest.fixture(scope="module")
def original(tmp_path_factory, fixtures_dir) -> Path:
    """The fixture checkpoint laid out as the original download, with the fixture LoRA as its cfg_step_lora."""
    root = tmp_path_factory.mktemp("original")
    fixtures_dir = fixtures_dir.resolve()
    for part in ("dit", "vae", "text_encoder"):
        (root / part).symlink_to(fixtures_dir / part)
    build_tiny_tokenizer(root / "tokenizer")
    (root / "lora").mkdir()
    (root / "lora" / f"{DISTILL_LORA}.safetensors").symlink_to(fixtures_dir / "lora_rank8.safetensors")
    return root


@pytest.fixture(scope="module")
def fastvideo(tmp_path_factory, original) -> Path:
    return write_fastvideo_checkpoint(original, tmp_path_factory.mktemp("fastvideo") / "LongCat-FastVideo")


def test_the_dit_folder_of_each_layout(original, fastvideo, tmp_path):
    assert dit_folder(original) == original / "dit"
    assert dit_folder(fastvideo) == fastvideo / "transformer"
    assert dit_folder(tmp_path) == tmp_path / "dit"  # neither: the name the missing-part messages use
    assert missing_parts(fastvideo) == [] and check_checkpoint(fastvideo) == fastvideo


def test_a_folder_with_both_layouts_is_refused(tmp_path):
    for part in ("dit", "transformer"):
        (tmp_path / part).mkdir()
    with pytest.raises(CheckpointError, match="both dit/ .* and transformer/ .*move one of them"):
        check_checkpoint(tmp_path)


def test_a_folder_without_a_dit_names_both_names(tmp_path):
    for part in ("vae", "text_encoder"):
        (tmp_path / part).mkdir()
    with pytest.raises(CheckpointError, match="lacks dit, tokenizer.*transformer/ for dit/"):
        check_checkpoint(tmp_path)


def test_fastvideos_loras_are_found_by_their_names(fastvideo, tmp_path):
    assert lora_path(fastvideo, DISTILL_LORA) == fastvideo / "lora" / "distilled" / f"{DISTILL_LORA}.safetensors"
    assert lora_path(fastvideo, REFINE_LORA) is None
    assert check_checkpoint(fastvideo, loras=[DISTILL_LORA]) == fastvideo
    with pytest.raises(CheckpointError, match=f"lacks lora/{REFINE_LORA}.safetensors"):
        check_checkpoint(fastvideo, loras=[REFINE_LORA])
    # A file of another name in FastVideo's folder (a LoRA downloaded on its own): the folder, holding its one file.
    folder = tmp_path / "lora" / "refinement"
    folder.mkdir(parents=True)
    (folder / "adapter.safetensors").write_bytes(b"")
    assert lora_path(tmp_path, REFINE_LORA) == folder


def test_lora_sources_name_fastvideos_loras_as_the_originals(fastvideo, original, tmp_path):
    assert lora_sources(fastvideo) == {DISTILL_LORA: fastvideo / "lora" / "distilled" / f"{DISTILL_LORA}.safetensors"}
    assert lora_sources(original) == {DISTILL_LORA: original / "lora" / f"{DISTILL_LORA}.safetensors"}
    (tmp_path / "lora" / "distilled").mkdir(parents=True)
    (tmp_path / "lora" / "mine").mkdir()
    (tmp_path / "lora" / "distilled" / "a.safetensors").write_bytes(b"")
    (tmp_path / "lora" / "mine" / "style.safetensors").write_bytes(b"")
    assert lora_sources(tmp_path) == {DISTILL_LORA: tmp_path / "lora" / "distilled" / "a.safetensors",
                                      "style": tmp_path / "lora" / "mine" / "style.safetensors"}
    (tmp_path / "lora" / "distilled" / "b.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="several LoRA files"):
        lora_sources(tmp_path)
    (tmp_path / "lora" / "distilled" / "b.safetensors").unlink()
    (tmp_path / "lora" / f"{DISTILL_LORA}.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"would both be the LoRA '{DISTILL_LORA}'"):
        lora_sources(tmp_path)


def test_a_hub_download_fetches_fastvideos_dit_folder():
    assert "transformer/*" in CHECKPOINT_PATTERNS and "dit/*" in CHECKPOINT_PATTERNS


def test_from_pretrained_on_a_fastvideo_folder_is_the_same_pipeline(original, fastvideo):
    want = LongCatPipeline.from_pretrained(original, dtype=jnp.float32)
    got = LongCatPipeline.from_pretrained(fastvideo, dtype=jnp.float32)
    assert got.dit.config == want.dit.config
    for model in ("dit", "vae", "text_encoder"):
        pairs = zip(jax.tree.leaves(nnx.state(getattr(want, model), nnx.Param)),
                    jax.tree.leaves(nnx.state(getattr(got, model), nnx.Param)), strict=True)
        for a, b in pairs:
            np.testing.assert_array_equal(a, b, err_msg=model)
    np.testing.assert_array_equal(got.tokenizer(["a cat"]).input_ids, want.tokenizer(["a cat"]).input_ids)
    assert got._named_loras == {DISTILL_LORA: fastvideo / "lora" / "distilled" / f"{DISTILL_LORA}.safetensors"}
