"""The released LongCat-Video configs (dit/config.json, text_encoder/config.json and vae/config.json values, as
/work/shared/REFERENCE.md and benchmarks/dit_step.py give them), for planning at the real size without a checkpoint."""

import jax.numpy as jnp

from kernels import BSAParams
from longcat_jax.memory.plan import Models
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.vae.config import VAEConfig

BSA = BSAParams(sparsity=0.9375, cdf_threshold=None, chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4))
DIT = DiTConfig(in_channels=16, out_channels=16, hidden_size=4096, depth=48, num_heads=32, caption_channels=4096,
                mlp_ratio=4, adaln_tembed_dim=512, frequency_embedding_size=256, patch_size=(1, 2, 2), enable_bsa=False,
                bsa_params=BSA, text_tokens_zero_pad=True)
UMT5_XXL = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
VAE = VAEConfig()
LORA_BYTES = 2 * 300 * 2**20  # two rank-128-size LoRA files (the distill and refinement LoRAs), bf16


def real_models(quantize: str | None = None) -> Models:
    """The released checkpoint's models in bf16, loaded as a checkpoint's pipeline loads them."""
    return Models(DIT, UMT5_XXL, VAE, jnp.bfloat16, jnp.bfloat16, jnp.bfloat16, quantize, LORA_BYTES)
