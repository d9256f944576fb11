"""A checkpoint folder laid out like the download, made of links to the reference fixtures' parts."""

from pathlib import Path

from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer


def link_fixture_checkpoint(root: Path, fixtures_dir: Path, *, distill_lora: bool = True) -> Path:
    """Fills `root` with the fixture dit/, vae/, text_encoder/ (links), a tiny tokenizer and, with `distill_lora`,
    the rank-8 fixture LoRA as lora/cfg_step_lora.safetensors. Returns `root`."""
    fixtures_dir = fixtures_dir.resolve()  # LONGCAT_FIXTURES may be relative (CI: ../shared/...); links need absolute
    for part in ("dit", "vae", "text_encoder"):
        (root / part).symlink_to(fixtures_dir / part)
    build_tiny_tokenizer(root / "tokenizer")
    if distill_lora:
        (root / "lora").mkdir()
        (root / "lora" / "cfg_step_lora.safetensors").symlink_to(fixtures_dir / "lora_rank8.safetensors")
    return root
