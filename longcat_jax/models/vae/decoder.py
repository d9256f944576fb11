"""The Wan 2.1 VAE decoder: latent chunk -> video chunk, with the causal caches between chunks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longcat_jax.models.vae.blocks import MidBlock, ResidualBlock
from longcat_jax.models.vae.chunking import frame_groups
from longcat_jax.models.vae.config import UpStageSpec, VAEConfig, decoder_in_dim, decoder_plan
from longcat_jax.models.vae.layers import CausalConv3d, ChannelRMSNorm
from longcat_jax.models.vae.resample import Upsample


class UpStage(nnx.Module):
    """Residual blocks followed by an optional 2x (spatial, or spatial and temporal) upsample."""

    def __init__(self, spec: UpStageSpec, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dims = [spec.in_dim] + [spec.out_dim] * spec.num_blocks
        self.blocks = nnx.List([ResidualBlock(a, b, **kw) for a, b in zip(dims[:-1], dims[1:])])
        self.upsample = (
            None
            if spec.upsample is None
            else Upsample(spec.out_dim, spec.out_dim // 2, temporal=spec.upsample == "up3d", **kw)
        )

    def __call__(self, x: jax.Array, cache: dict | None) -> tuple[jax.Array, dict]:
        cache = cache or {"blocks": [None] * len(self.blocks), "upsample": None}
        block_caches = []
        for block, block_cache in zip(self.blocks, cache["blocks"]):
            x, block_cache = block(x, block_cache)
            block_caches.append(block_cache)
        upsample_cache = None
        if self.upsample is not None:
            x, upsample_cache = self.upsample(x, cache["upsample"])
        return x, {"blocks": block_caches, "upsample": upsample_cache}


class Decoder(nnx.Module):
    """conv_in, middle block, the upsampling stages of `decoder_plan`, norm, conv_out to the video channels.

    `__call__(z, cache, frame_group=None)`: z `[B, T, h, w, z_dim]` (after post_quant). The first
    latent frame of a video (cache None) gives 1 frame; later chunks of T latent frames give 4 T
    frames, all at 8x the spatial size. Returns (`[B, T_out, 8h, 8w, C_out]`, new cache). The
    stages after the last temporal upsample (the full-resolution ones) and the head run
    `frame_group` frames at a time (None: all at once); the result is the same, the memory smaller.
    """

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        in_dim = decoder_in_dim(config)
        self.conv_in = CausalConv3d(config.z_dim, in_dim, **kw)
        self.mid = MidBlock(in_dim, **kw)
        plan = decoder_plan(config)
        self.stages = nnx.List([UpStage(spec, **kw) for spec in plan])
        self.temporal_stages = 1 + max(i for i, spec in enumerate(plan) if spec.upsample == "up3d")
        out_dim = plan[-1].out_dim
        self.norm_out = ChannelRMSNorm(out_dim, **kw)
        self.conv_out = CausalConv3d(out_dim, config.out_channels, **kw)

    def _frame_wise(self, x: jax.Array, cache: dict | None) -> tuple[jax.Array, dict]:
        """The stages after the last temporal upsample, norm and conv_out: T frames in, T frames out."""
        stages = list(self.stages)[self.temporal_stages :]
        cache = cache or {"stages": [None] * len(stages), "conv_out": None}
        stage_caches = []
        for stage, stage_cache in zip(stages, cache["stages"]):
            x, stage_cache = stage(x, stage_cache)
            stage_caches.append(stage_cache)
        x, conv_out_cache = self.conv_out(jax.nn.silu(self.norm_out(x)), cache["conv_out"])
        return x, {"stages": stage_caches, "conv_out": conv_out_cache}

    def __call__(self, z: jax.Array, cache: dict | None, frame_group: int | None = None) -> tuple[jax.Array, dict]:
        stages = list(self.stages)[: self.temporal_stages]
        cache = cache or {"conv_in": None, "mid": None, "stages": [None] * len(stages), "frame_wise": None}
        x, conv_in_cache = self.conv_in(z, cache["conv_in"])
        x, mid_cache = self.mid(x, cache["mid"])
        stage_caches = []
        for stage, stage_cache in zip(stages, cache["stages"]):
            x, stage_cache = stage(x, stage_cache)
            stage_caches.append(stage_cache)
        x, frame_wise_cache = frame_groups(self._frame_wise, x, cache["frame_wise"], frame_group)
        return x, {"conv_in": conv_in_cache, "mid": mid_cache, "stages": stage_caches, "frame_wise": frame_wise_cache}
