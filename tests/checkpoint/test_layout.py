"""`check_checkpoint` refuses, before any model loads, a folder lacking a part a run needs; an empty
tokenizer folder counts as lacking the tokenizer."""

import pytest

from longcat_jax.checkpoint.layout import check_checkpoint, missing_parts, names_a_file_inside
from longcat_jax.errors import CheckpointError


def _checkpoint(root):
    for part in ("dit", "vae", "text_encoder", "tokenizer"):
        (root / part).mkdir(parents=True)
    return root


def test_an_empty_tokenizer_folder_is_refused(tmp_path):
    root = _checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="lacks tokenizer/tokenizer.json or spiece.model"):
        check_checkpoint(root)
    (root / "tokenizer" / "spiece.model").write_bytes(b"x")
    assert check_checkpoint(root) == root
    assert missing_parts(root) == []


@pytest.mark.parametrize(("name", "inside"), [
    ("model-00001-of-00002.safetensors", True), ("sub/x.safetensors", True), ("../x.safetensors", False),
    ("a/../../x", False), ("/etc/x", False), ("C:\\x.safetensors", False), ("", False),
])
def test_names_a_file_inside(name, inside):
    assert names_a_file_inside(name) is inside
