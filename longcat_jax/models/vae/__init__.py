"""The Wan 2.1 video VAE (AutoencoderKLWan) in flax.nnx: `load_vae(path)`, `WanVAE.encode` / `decode`."""

from longcat_jax.models.vae.autoencoder import LatentDistribution, WanVAE, decode_frames, encode_moments
from longcat_jax.models.vae.config import VAEConfig
from longcat_jax.models.vae.loading import load_vae, random_vae
from longcat_jax.models.vae.tiling import TilingConfig

__all__ = [
    "LatentDistribution",
    "TilingConfig",
    "VAEConfig",
    "WanVAE",
    "decode_frames",
    "encode_moments",
    "load_vae",
    "random_vae",
]
