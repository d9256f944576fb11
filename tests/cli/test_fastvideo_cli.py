"""`--model-path` on FastVideo's layout of the checkpoint (`transformer/`, `lora/distilled/`): a run is planned from
its `transformer/config.json`, and its distill LoRA (FastVideo's lora_A / lora_B / lora_alpha) loads as the original's.
The DiT and the whole pipeline are compared with the original layout in tests/models/test_fastvideo_dit.py and
tests/checkpoint/test_fastvideo_layout.py."""

from pathlib import Path

import numpy as np
import pytest

from longcat_jax import generate
from longcat_jax.checkpoint.layout import DISTILL_LORA, lora_path
from longcat_jax.models.dit import load_lora
from longcat_jax.pipelines.tasks import plan_context
from tests.helpers.fastvideo_checkpoint import write_fastvideo_checkpoint


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, fixtures_dir) -> tuple[Path, Path]:
    original = tmp_path_factory.mktemp("original")
    fixtures_dir = fixtures_dir.resolve()
    for part in ("dit", "vae", "text_encoder"):
        (original / part).symlink_to(fixtures_dir / part)
    (original / "tokenizer").mkdir()
    (original / "tokenizer" / "spiece.model").write_bytes(b"not read when planning")
    (original / "lora").mkdir()
    (original / "lora" / f"{DISTILL_LORA}.safetensors").symlink_to(fixtures_dir / "lora_rank8.safetensors")
    return original, write_fastvideo_checkpoint(original, tmp_path_factory.mktemp("fastvideo") / "fv")


def test_a_distilled_run_is_planned_from_fastvideos_layout(layouts):
    contexts = [plan_context(generate.parse_request(["--model-path", str(root), "--distill"]))[1] for root in layouts]
    assert contexts[0].dit_config == contexts[1].dit_config


def test_fastvideos_distill_lora_loads_as_the_original(layouts):
    original, fastvideo = (load_lora(lora_path(root, DISTILL_LORA), name=DISTILL_LORA) for root in layouts)
    assert original.modules.keys() == fastvideo.modules.keys()
    for module, factors in original.modules.items():
        np.testing.assert_array_equal(factors.down, fastvideo.modules[module].down)
        np.testing.assert_array_equal(factors.up, fastvideo.modules[module].up)
        assert factors.alpha_scale == fastvideo.modules[module].alpha_scale
