"""Run presets: the sizes and step counts a run uses unless told otherwise, for the released checkpoint and for the
small built-in model (whose model configs live here too, in one place).

The built-in model is LongCat's architectures at toy sizes with random weights from a fixed seed.
`python -m longcat_jax.generate` without `--model-path` runs on it, so a new user sees the whole path (prompt ->
UMT5 -> DiT sampling -> VAE -> mp4) work on a CPU in well under a minute, and the tests and examples exercise
every task without a download. The videos it makes are noise-like: the weights are random, which is logged
loudly. The tokenizer is a real sentencepiece model trained at run time on a built-in text; the LoRAs standing in
for `cfg_step_lora` and `refinement_lora` are random low-rank updates, so `--distill` and `--refine` run too.
The models never import this module: it sits above them.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile

import jax.numpy as jnp

from kernels import BSAParams
from longcat_jax.checkpoint.layout import DISTILL_LORA, REFINE_LORA
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.loading import random_dit
from longcat_jax.models.dit.lora import LoRA, random_lora
from longcat_jax.models.dit.quantized_linear import quantize_linears
from longcat_jax.models.dit.transformer import LongCatDiT
from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.text_encoder.loading import random_text_encoder
from longcat_jax.models.text_encoder.tiny_tokenizer import build_tiny_tokenizer
from longcat_jax.models.vae import VAEConfig, random_vae
from longcat_jax.quantization.modes import uses_fp8_attention

logger = logging.getLogger(__name__)

# The negative prompt of the original's demo scripts (run_demo_text_to_video.py and the others): the default of
# every guided stage, so that a prompt and seed on the same weights can match the original's demo.
DEFAULT_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards"
)


@dataclasses.dataclass(frozen=True)
class PipelineDefaults:
    """Sizes and step counts a run uses unless told otherwise (the original's for a real checkpoint).

    size_scale: the bucket tables are scaled by it (1 for the real model; the tiny model works at 1/4 size).
    negative_prompt: the unconditional branch's prompt when guidance is on and none is given.
    """

    height: int = 480
    width: int = 832
    num_frames: int = 93
    num_inference_steps: int = 50
    distill_inference_steps: int = 16
    guidance_scale: float = 4.0
    num_cond_frames: int = 13
    refine_inference_steps: int = 50
    size_scale: float = 1.0
    max_sequence_length: int = 512
    fps: float = 15.0
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT


RELEASED_DEFAULTS = PipelineDefaults()

TINY_SEED = 0
RANDOM_WEIGHTS_WARNING = (
    "Using the built-in TINY model with RANDOM weights (seed %d): the video will be noise, not your prompt. "
    "Pass --model-path to a LongCat-Video checkpoint for real results."
)
TINY_TEXT_CONFIG = UMT5Config(vocab_size=192, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
TINY_VAE_CONFIG = VAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1)
TINY_DIT_CONFIG = DiTConfig(
    in_channels=16,
    out_channels=16,
    hidden_size=64,
    depth=2,
    num_heads=2,
    caption_channels=TINY_TEXT_CONFIG.d_model,
    adaln_tembed_dim=32,
    frequency_embedding_size=64,
    enable_bsa=False,
    bsa_params=BSAParams(sparsity=0.75),
    text_tokens_zero_pad=True,
)
TINY_DEFAULTS = PipelineDefaults(
    height=128,
    width=208,
    num_frames=13,
    num_inference_steps=4,
    distill_inference_steps=4,
    num_cond_frames=5,
    refine_inference_steps=8,
    size_scale=0.25,
    max_sequence_length=64,
    negative_prompt="",  # the original's list does not fit the 64-token context
)


@dataclasses.dataclass
class TinyModels:
    """Everything `LongCatPipeline` needs, at toy sizes."""

    dit: LongCatDiT
    vae: object
    text_encoder: object
    tokenizer: object
    loras: dict[str, LoRA]


def build_tiny_models(*, dtype=jnp.float32, seed: int = TINY_SEED, quantize: str | None = None) -> TinyModels:
    """The built-in model: tiny DiT, VAE and UMT5 with random weights from `seed`, a tokenizer trained now.
    `quantize` (a `longcat_jax.quantization` mode) quantizes the DiT's large Linears as `load_dit` does."""
    logger.warning(RANDOM_WEIGHTS_WARNING, seed)
    with tempfile.TemporaryDirectory(prefix="longcat_tiny_tokenizer_") as folder:
        # The sentencepiece model is read into memory; the folder is not needed afterwards.
        tokenizer = build_tiny_tokenizer(folder, vocab_size=TINY_TEXT_CONFIG.vocab_size)
    dit = quantize_linears(random_dit(TINY_DIT_CONFIG, seed=seed, dtype=dtype), quantize)
    dit.set_fp8_attention(uses_fp8_attention(quantize))
    return TinyModels(
        dit=dit,
        vae=random_vae(TINY_VAE_CONFIG, seed=seed + 1, dtype=jnp.float32),
        text_encoder=random_text_encoder(TINY_TEXT_CONFIG, seed=seed + 2, dtype=jnp.float32),
        tokenizer=tokenizer,
        loras={
            DISTILL_LORA: random_lora(TINY_DIT_CONFIG, DISTILL_LORA, seed=seed + 3),
            REFINE_LORA: random_lora(TINY_DIT_CONFIG, REFINE_LORA, seed=seed + 4),
        },
    )
