"""The Wan 2.1 VAE encoder: video chunk -> (mean, logvar) latent chunk, with the causal caches between chunks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longcat_jax.models.vae.blocks import FrameAttention, MidBlock, ResidualBlock
from longcat_jax.models.vae.chunking import frame_groups
from longcat_jax.models.vae.config import VAEConfig, encoder_out_dim, encoder_plan
from longcat_jax.models.vae.layers import CausalConv3d, ChannelRMSNorm
from longcat_jax.models.vae.resample import Downsample


def _run_layers(layers, x: jax.Array, caches: list) -> tuple[jax.Array, list]:
    new_caches = []
    for layer, cache in zip(layers, caches):
        if isinstance(layer, FrameAttention):
            x = layer(x)
        else:
            x, cache = layer(x, cache)
        new_caches.append(cache)
    return x, new_caches


class Encoder(nnx.Module):
    """conv_in, the downsampling layers of `encoder_plan`, middle block, norm, conv_out to 2 * z_dim channels.

    `__call__(x, cache, frame_group=None)`: x `[B, T, H, W, C_in]` is either the first frame of a
    video (cache None) or a chunk of 4 frames (cache from the previous call). Returns
    (`[B, T', H/8, W/8, 2 * z_dim]` with T' = 1 for the first frame and T / 4 after, new cache).
    The layers before the first temporal downsample (the full-resolution ones) run `frame_group`
    frames at a time (None: all at once); the result is the same, the memory smaller.
    """

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.conv_in = CausalConv3d(config.in_channels, config.base_dim, **kw)
        plan = encoder_plan(config)
        layers = []
        for spec in plan:
            if spec.kind == "res":
                layers.append(ResidualBlock(spec.in_dim, spec.out_dim, **kw))
            elif spec.kind == "attn":
                layers.append(FrameAttention(spec.out_dim, **kw))
            else:
                layers.append(Downsample(spec.out_dim, temporal=spec.kind == "down3d", **kw))
        self.layers = nnx.List(layers)
        self.frame_wise_layers = next(i for i, spec in enumerate(plan) if spec.kind == "down3d")
        out_dim = encoder_out_dim(config)
        self.mid = MidBlock(out_dim, **kw)
        self.norm_out = ChannelRMSNorm(out_dim, **kw)
        self.conv_out = CausalConv3d(out_dim, 2 * config.z_dim, **kw)

    def _frame_wise(self, x: jax.Array, cache: dict | None) -> tuple[jax.Array, dict]:
        """conv_in and the layers before the first temporal downsample: T frames in, T frames out."""
        split = self.frame_wise_layers
        cache = cache or {"conv_in": None, "layers": [None] * split}
        x, conv_in_cache = self.conv_in(x, cache["conv_in"])
        x, layer_caches = _run_layers(list(self.layers)[:split], x, cache["layers"])
        return x, {"conv_in": conv_in_cache, "layers": layer_caches}

    def __call__(self, x: jax.Array, cache: dict | None, frame_group: int | None = None) -> tuple[jax.Array, dict]:
        split = self.frame_wise_layers
        cache = cache or {"frame_wise": None, "layers": [None] * (len(self.layers) - split), "mid": None,
                          "conv_out": None}
        x, frame_wise_cache = frame_groups(self._frame_wise, x, cache["frame_wise"], frame_group)
        x, layer_caches = _run_layers(list(self.layers)[split:], x, cache["layers"])
        x, mid_cache = self.mid(x, cache["mid"])
        x, conv_out_cache = self.conv_out(jax.nn.silu(self.norm_out(x)), cache["conv_out"])
        return x, {"frame_wise": frame_wise_cache, "layers": layer_caches, "mid": mid_cache,
                   "conv_out": conv_out_cache}
