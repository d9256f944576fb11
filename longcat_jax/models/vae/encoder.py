"""The Wan 2.1 VAE encoder: video chunk -> (mean, logvar) latent chunk, with the causal caches between chunks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longcat_jax.models.vae.blocks import FrameAttention, MidBlock, ResidualBlock
from longcat_jax.models.vae.config import VAEConfig, encoder_out_dim, encoder_plan
from longcat_jax.models.vae.layers import CausalConv3d, ChannelRMSNorm
from longcat_jax.models.vae.resample import Downsample


class Encoder(nnx.Module):
    """conv_in, the downsampling layers of `encoder_plan`, middle block, norm, conv_out to 2 * z_dim channels.

    `__call__(x, cache)`: x `[B, T, H, W, C_in]` is either the first frame of a video (cache None) or
    a chunk of 4 frames (cache from the previous call). Returns (`[B, T', H/8, W/8, 2 * z_dim]`
    with T' = 1 for the first frame and T / 4 after, new cache).
    """

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.conv_in = CausalConv3d(config.in_channels, config.base_dim, **kw)
        layers = []
        for spec in encoder_plan(config):
            if spec.kind == "res":
                layers.append(ResidualBlock(spec.in_dim, spec.out_dim, **kw))
            elif spec.kind == "attn":
                layers.append(FrameAttention(spec.out_dim, **kw))
            else:
                layers.append(Downsample(spec.out_dim, temporal=spec.kind == "down3d", **kw))
        self.layers = nnx.List(layers)
        out_dim = encoder_out_dim(config)
        self.mid = MidBlock(out_dim, **kw)
        self.norm_out = ChannelRMSNorm(out_dim, **kw)
        self.conv_out = CausalConv3d(out_dim, 2 * config.z_dim, **kw)

    def __call__(self, x: jax.Array, cache: dict | None) -> tuple[jax.Array, dict]:
        cache = cache or {"conv_in": None, "layers": [None] * len(self.layers), "mid": None, "conv_out": None}
        x, conv_in_cache = self.conv_in(x, cache["conv_in"])
        layer_caches = []
        for layer, layer_cache in zip(self.layers, cache["layers"]):
            if isinstance(layer, FrameAttention):
                x = layer(x)
            else:
                x, layer_cache = layer(x, layer_cache)
            layer_caches.append(layer_cache)
        x, mid_cache = self.mid(x, cache["mid"])
        x, conv_out_cache = self.conv_out(jax.nn.silu(self.norm_out(x)), cache["conv_out"])
        return x, {"conv_in": conv_in_cache, "layers": layer_caches, "mid": mid_cache, "conv_out": conv_out_cache}
