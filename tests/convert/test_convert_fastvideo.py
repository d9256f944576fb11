"""`python -m convert` on FastVideo's layout: the same converted checkpoint as from the original layout (every part,
tensor, dtype and the DiT's config.json; with and without --quantize), and a missing or extra tensor refused by its
FastVideo name before anything is written."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convert.__main__ import main as convert_main
from convert.api import convert_checkpoint
from longcat_jax.checkpoint.orbax_chunks import is_converted, iter_part, read_index
from longcat_jax.errors import CheckpointError
from tests.helpers.dit_checkpoints import write_safetensors
from tests.helpers.fastvideo_checkpoint import fastvideo_dit, read_all, write_fastvideo_checkpoint

PARTS = ("dit", "vae", "text_encoder", "lora/cfg_step_lora", "lora/refinement_lora")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, fixtures_dir) -> tuple[Path, Path]:
    """(original, FastVideo) layouts of the fixture checkpoint, with the fixture LoRA as both named LoRAs."""
    original = tmp_path_factory.mktemp("original")
    fixtures_dir = fixtures_dir.resolve()
    for part in ("dit", "vae", "text_encoder"):
        (original / part).symlink_to(fixtures_dir / part)
    (original / "lora").mkdir()
    for name in ("cfg_step_lora", "refinement_lora"):
        (original / "lora" / f"{name}.safetensors").symlink_to(fixtures_dir / "lora_rank8.safetensors")
    (original / "tokenizer").mkdir()
    (original / "tokenizer" / "spiece.model").write_bytes(b"tokenizer bytes")
    (original / "scheduler").mkdir()
    (original / "scheduler" / "scheduler_config.json").write_text('{"shift": 1.0}')
    fastvideo = write_fastvideo_checkpoint(original, tmp_path_factory.mktemp("fastvideo") / "fv")
    return original, fastvideo


def _converted(sources, tmp_path_factory, *extra: str) -> tuple[Path, Path]:
    out = []
    for src in sources:
        dst = tmp_path_factory.mktemp("dst") / "converted"
        assert convert_main([str(src), str(dst), "--quiet", *extra]) == 0
        out.append(dst)
    return out[0], out[1]


def _assert_same_part(a: Path, b: Path) -> None:
    assert read_index(a) == read_index(b), a.name
    for (path_a, array_a), (path_b, array_b) in zip(iter_part(a), iter_part(b), strict=True):
        assert path_a == path_b and array_a.dtype == array_b.dtype
        np.testing.assert_array_equal(array_a, array_b, err_msg=str(path_a))


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory) -> tuple[Path, Path]:
    return _converted(sources, tmp_path_factory)


def test_fastvideo_converts_to_the_same_checkpoint(converted):
    from_original, from_fastvideo = converted
    for part in PARTS:
        assert is_converted(from_fastvideo / part), part
        _assert_same_part(from_original / part, from_fastvideo / part)
    config = json.loads((from_fastvideo / "dit" / "config.json").read_text())
    assert config == json.loads((from_original / "dit" / "config.json").read_text())
    assert config["_class_name"] == "LongCatVideoTransformer3DModel" and "num_attention_heads" not in config
    assert (from_fastvideo / "tokenizer" / "spiece.model").read_bytes() == b"tokenizer bytes"
    assert sorted(p.name for p in from_fastvideo.iterdir()) == sorted(p.name for p in from_original.iterdir())


def test_quantized_conversion_of_fastvideo_matches_the_originals(sources, tmp_path_factory):
    from_original, from_fastvideo = _converted(sources, tmp_path_factory, "--quantize", "int8")
    assert {e["dtype"] for e in read_index(from_fastvideo / "dit")} >= {"int8"}
    _assert_same_part(from_original / "dit", from_fastvideo / "dit")


@pytest.mark.parametrize(("change", "named"), [
    (lambda t: t.pop("blocks.0.cross_attn.to_v.bias"), "'blocks.0.cross_attn.to_v.bias'"),
    (lambda t: t.update({"blocks.0.self_attn.to_qkv.weight": t["blocks.0.self_attn.to_q.weight"]}),
     "'blocks.0.self_attn.to_qkv.weight'"),
])
def test_a_missing_or_extra_tensor_is_refused_before_writing(sources, tmp_path, change, named):
    _, fastvideo = sources
    src = tmp_path / "src"
    shutil.copytree(fastvideo, src)
    tensors = fastvideo_dit(read_all(sources[0] / "dit"))
    change(tensors)
    write_safetensors(src / "transformer" / "model.safetensors", tensors)
    dst = tmp_path / "dst"
    with pytest.raises(CheckpointError, match=named):
        convert_checkpoint(src, dst, progress=False)
    assert not dst.exists()
