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
# The larger of the released LoRAs as the plan counts it (`memory.lora_sizes`; each stage runs one of them): the
# refinement LoRA, rank 128 on every block's attention, cross attention, FFN and adaLN Linears and the final layer
# (1,543 tensors), 1,759,649,792 elements once its split up factors are loaded block-diagonal (lora_elements of a
# file of its names and shapes, written by tools/random_checkpoint.py), bf16.
LORA_BYTES = 1_759_649_792 * 2
# The distill LoRA (cfg_step_lora: rank 128 on every block's attention, cross attention and FFN, 1,152 tensors), the
# one a distilled 480p run without refinement holds: 832,045,056 elements as loaded, bf16.
DISTILL_LORA_BYTES = 832_045_056 * 2


def real_models(quantize: str | None = None, lora_bytes: int = LORA_BYTES) -> Models:
    """The released checkpoint's models in bf16, loaded as a checkpoint's pipeline loads them."""
    return Models(DIT, UMT5_XXL, VAE, jnp.bfloat16, jnp.bfloat16, jnp.bfloat16, quantize, lora_bytes)
