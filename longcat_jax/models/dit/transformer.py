"""The LongCat video DiT (`LongCatVideoTransformer3DModel` of the original) in flax.nnx.

Call it like the original forward:
    out = model(latents [B,C,T,H,W], timestep [B] or [B,T], text [B,1,L,C_cap], text_mask [B,L],
                num_cond_latents=0, kv_cache=None, return_kv=False, skip_crs_attn=False)
Everything is static-shaped and jit-compilable; the text length per item is carried by the mask.

A call is three parts: `embed` (patch, timestep and caption embedding), the blocks, `unembed` (final layer and
unpatchify). `DiTEnds` holds the layers of the first and last parts without the blocks, so a caller can run the
blocks itself (`longcat_jax.memory.streaming` streams their weights from host memory one block at a time).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from kernels import BACKENDS, BSAParams, KernelConfig
from longcat_jax.errors import ConfigError, InputError
from longcat_jax.models.dit.block import DiTBlock
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.embed import CaptionEmbedder, FinalLayer, PatchEmbed3D, TimestepEmbedder, unpatchify
from longcat_jax.models.dit.quantized_linear import quantize_linears
from longcat_jax.quantization.attention import check_fp8_attention_shapes
from longcat_jax.quantization.modes import uses_fp8_attention

# k and v of every block, each [depth, B, S_cond, H, D], after q/k RMSNorm and before RoPE.
KVCache = tuple[jax.Array, jax.Array]


class Embedded(NamedTuple):
    """What `embed` gives the blocks: tokens x [B, N, C], t_emb [B, T, C_t] float32, text [B, L, C] and its key
    mask [B, L] bool (None: every token is attended)."""

    x: jax.Array
    t_emb: jax.Array
    text: jax.Array
    text_mask: jax.Array | None


class _Ends:
    """The parts of a DiT call outside its blocks; used by `LongCatDiT` and `DiTEnds` (which hold the same layers:
    `config`, `dtype`, `patch_embed`, `timestep_embed`, `caption_embed`, `final_layer`)."""

    def token_grid(self, hidden_states: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array, *,
                   num_cond_latents: int = 0, kv_cache=None) -> tuple[int, int, int]:
        """Checks a call's inputs (see `LongCatDiT.__call__`) and returns its token grid (T, H, W)."""
        cfg = self.config
        if hidden_states.ndim != 5 or hidden_states.shape[1] != cfg.in_channels:
            raise InputError(
                f"hidden_states must be latents [B, {cfg.in_channels}, T, H, W] (this DiT's in_channels), got "
                f"{hidden_states.shape}"
            )
        if encoder_hidden_states.shape[-1] != cfg.caption_channels:
            raise InputError(
                f"encoder_hidden_states must end in this DiT's caption_channels {cfg.caption_channels} (the text "
                f"encoder's width), got {encoder_hidden_states.shape}"
            )
        b, _, t, h, w = hidden_states.shape
        grid = (t // cfg.patch_size[0], h // cfg.patch_size[1], w // cfg.patch_size[2])
        if num_cond_latents < 0 or (kv_cache is None and num_cond_latents > grid[0]):
            raise InputError(f"num_cond_latents={num_cond_latents} out of range for {grid[0]} latent frames")
        if timestep.ndim not in (1, 2) or timestep.shape not in ((b,), (b, grid[0])):
            raise InputError(f"timestep must be [B] or [B, T] = [{b}, {grid[0]}], got {timestep.shape}")
        return grid

    def embed(self, hidden_states: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array,
              encoder_attention_mask: jax.Array | None, grid: tuple[int, int, int]) -> Embedded:
        """Latents [B, C, T, H, W] to tokens, timesteps [B] or [B, T] to their embedding, text to the DiT width."""
        b = hidden_states.shape[0]
        if timestep.ndim == 1:
            timestep = jnp.broadcast_to(timestep[:, None], (b, grid[0]))
        x = self.patch_embed(hidden_states.astype(self.dtype))  # [B, N, C]
        # Timesteps stay float32 in every mode. (The original rounds them to the model dtype first,
        # which in bf16 moves e.g. 999 to 1000 and changes the high-frequency sinusoids completely.)
        t_flat = timestep.astype(jnp.float32).reshape(-1)
        t_emb = self.timestep_embed(t_flat).reshape(b, grid[0], -1)  # [B, T, C_t] float32
        text, text_mask = self._text(encoder_hidden_states.astype(self.dtype), encoder_attention_mask)
        return Embedded(x, t_emb, text, text_mask)

    def _text(self, encoder_hidden_states: jax.Array, encoder_attention_mask: jax.Array | None):
        """Embedded text [B, L, C] and its key mask [B, L] bool (None: every token is attended)."""
        if encoder_hidden_states.ndim != 4 or encoder_hidden_states.shape[1] != 1:
            raise InputError(f"encoder_hidden_states must be [B, 1, L, C], got {encoder_hidden_states.shape}")
        text = self.caption_embed(encoder_hidden_states[:, 0])  # [B, L, C]
        if encoder_attention_mask is None:
            return text, None
        mask = encoder_attention_mask.reshape(encoder_attention_mask.shape[0], -1)
        if mask.shape != text.shape[:2]:
            raise InputError(f"encoder_attention_mask {encoder_attention_mask.shape} does not fit text {text.shape[:2]}")
        if self.config.text_tokens_zero_pad:
            # Padding tokens become zero vectors that every query still attends to (as the original).
            return text * mask[:, :, None].astype(text.dtype), None
        return text, mask != 0

    def unembed(self, x: jax.Array, t_emb: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
        """Tokens [B, N, C] after the blocks -> velocity [B, C_out, T, H, W] float32."""
        cfg = self.config
        b = x.shape[0]
        x = self.final_layer(x.reshape(b, grid[0], -1, x.shape[-1]), t_emb)  # [B, T, S, P*C_out]
        return unpatchify(x.reshape(b, -1, x.shape[-1]), grid, cfg.patch_size, cfg.out_channels).astype(jnp.float32)


def _input_layers(config: DiTConfig, rngs: nnx.Rngs, dtype, param_dtype):
    """A DiT's patch embedding, timestep embedder and caption embedder, new."""
    return (PatchEmbed3D(config.patch_size, config.in_channels, config.hidden_size, rngs=rngs, dtype=dtype,
                         param_dtype=param_dtype),
            TimestepEmbedder(config.adaln_tembed_dim, config.frequency_embedding_size, rngs=rngs,
                             param_dtype=param_dtype),
            CaptionEmbedder(config.caption_channels, config.hidden_size, rngs=rngs, dtype=dtype,
                            param_dtype=param_dtype))


def _final_layer(config: DiTConfig, rngs: nnx.Rngs, param_dtype) -> FinalLayer:
    return FinalLayer(config.hidden_size, math.prod(config.patch_size), config.out_channels, config.adaln_tembed_dim,
                      rngs=rngs, param_dtype=param_dtype)


class DiTEnds(_Ends, nnx.Module):
    """The layers of a DiT outside its blocks, for code that runs `embed` and `unembed` apart from the blocks.
    `DiTEnds.of(dit)` shares a `LongCatDiT`'s (not copied): `nnx.split(DiTEnds.of(dit))` gives their weights alone,
    for running `embed` and `unembed` as separate compiled functions. `DiTEnds.new(config, rngs=...)` builds new
    ones, with the parameter paths a `LongCatDiT` has for them, for code that runs the blocks of a checkpoint one at
    a time (`models.dit.calibration`)."""

    def __init__(self, config: DiTConfig, dtype, patch_embed: PatchEmbed3D, timestep_embed: TimestepEmbedder,
                 caption_embed: CaptionEmbedder, final_layer: FinalLayer):
        self.config, self.dtype = config, dtype
        self.patch_embed, self.timestep_embed, self.caption_embed = patch_embed, timestep_embed, caption_embed
        self.final_layer = final_layer

    @classmethod
    def of(cls, dit: LongCatDiT) -> DiTEnds:
        """The end layers of `dit`, shared with it."""
        return cls(dit.config, dit.dtype, dit.patch_embed, dit.timestep_embed, dit.caption_embed, dit.final_layer)

    @classmethod
    def new(cls, config: DiTConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32) -> DiTEnds:
        """New end layers for `config`, initialised from `rngs`."""
        return cls(config, dtype, *_input_layers(config, rngs, dtype, param_dtype),
                   _final_layer(config, rngs, param_dtype))


class LongCatDiT(_Ends, nnx.Module):
    """Patch embedding, timestep/caption embedders, `depth` single-stream blocks, final layer, unpatchify.

    dtype: activation dtype (bfloat16 for bf16 inference); param_dtype: weight dtype. Timestep
    embedding, adaLN, norms and the final Linear compute in float32 as in the original.
    """

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 quantize: str | None = None):
        self.config = config
        self.dtype = dtype
        # Self attention's BSA: one setting for every block, read by __call__ and passed down (static, so a
        # change retraces under jit). It starts as the config says, as the original's model does.
        self.bsa: BSAParams | None = config.bsa_params if config.enable_bsa else None
        self.bsa_backend = "auto"
        self.bsa_kernel_config: KernelConfig | None = None
        self.patch_embed, self.timestep_embed, self.caption_embed = _input_layers(config, rngs, dtype, param_dtype)
        self.blocks = nnx.List(
            [
                DiTBlock(config.hidden_size, config.num_heads, config.ffn_hidden_size, config.adaln_tembed_dim,
                         rngs=rngs, dtype=dtype, param_dtype=param_dtype)
                for _ in range(config.depth)
            ]
        )
        self.final_layer = _final_layer(config, rngs, param_dtype)
        self.context_parallel = None
        # quantize: a `longcat_jax.quantization` mode ('fp8', 'fp8-weight-only', 'int8'; None/'none': none) for
        # the large Linears of every block; the policy module lists what stays in high precision and why.
        self.quantize = quantize if quantize not in (None, "none") else None
        quantize_linears(self, self.quantize)
        self.set_fp8_attention(uses_fp8_attention(self.quantize))

    def set_bsa(self, params: BSAParams | None, *, backend: str = "auto", kernel_config: KernelConfig | None = None
                ) -> None:
        """Self attention block-sparse with `params` in every block, or dense (None); like the original's
        enable_bsa()/disable_bsa(). `backend` and `kernel_config` are `kernels.bsa_attention`'s: the config picks the
        Pallas backends' forward and backward kernels (training takes the Mosaic GPU backward by it; None: the
        defaults). The next jit call retraces."""
        if params is not None and not isinstance(params, BSAParams):
            raise ConfigError(
                f"set_bsa takes a kernels.BSAParams or None, got {type(params).__name__}; read a JSON config "
                "with longcat_jax.bsa_config.read_bsa_config"
            )
        if backend not in BACKENDS:
            raise ConfigError(f"unknown BSA backend {backend!r}; choose one of {BACKENDS}")
        if kernel_config is not None and not isinstance(kernel_config, KernelConfig):
            raise ConfigError(f"set_bsa's kernel_config must be a kernels.KernelConfig or None, got "
                              f"{type(kernel_config).__name__}")
        self.bsa = params
        self.bsa_backend = backend
        self.bsa_kernel_config = kernel_config

    def set_context_parallel(self, plan) -> None:
        """Runs the blocks sequence-parallel by `plan` (a `longcat_jax.sharding.ContextParallel`; None: off).

        Use `longcat_jax.sharding.shard_dit`, which also places the weights; the next jit call retraces.
        """
        self.context_parallel = plan
        for block in self.blocks:
            block.attn.context_parallel = plan
        self.set_row_kernels(plan is None)

    def set_row_kernels(self, on: bool) -> None:
        """Whether FP8 blocks quantize their GEMM inputs with Pallas row kernels on NVIDIA GPUs (on by default). Off
        for arrays split over devices (context parallelism sets it; data-parallel training too): XLA's sharding
        propagation cannot split a kernel's rows and would gather them, while XLA's own form splits. The next jit
        call retraces."""
        for block in self.blocks:
            block.row_kernels = on
            block.ffn.row_kernels = on

    def set_fp8_attention(self, on: bool) -> None:
        """Runs every block's self attention in FP8 (the mode 'fp8-attention' sets it): dense through
        `longcat_jax.quantization.attention`, block-sparse through `kernels.KernelConfig(fp8=True)`; off: in the
        model's dtype. The next jit call retraces. Refuses a head_dim cuDNN's FP8 attention cannot take, before
        anything runs."""
        if on:
            head_dim = self.config.hidden_size // self.config.num_heads
            check_fp8_attention_shapes((1, 1, self.config.num_heads, head_dim), (1, 1, self.config.num_heads, head_dim),
                                       (1, 1, self.config.num_heads, head_dim))
        for block in self.blocks:
            block.attn.fp8_attention = bool(on)

    @property
    def fp8_attention(self) -> bool:
        """Whether the blocks' self attention runs in FP8 (see `set_fp8_attention`)."""
        return self.blocks[0].attn.fp8_attention if len(self.blocks) else False

    def set_token_chunking(self, chunk_tokens: int | None) -> None:
        """Runs every block's cross attention and FFN over groups of whole latent frames of at most `chunk_tokens`
        tokens (at least one frame), one group at a time, so their temporaries hold a group, not the whole video;
        None: all tokens at once. The result does not change; the next jit call retraces."""
        if chunk_tokens is not None and (isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int)
                                         or chunk_tokens < 1):
            raise ConfigError(f"chunk_tokens must be a positive int or None, got {chunk_tokens!r}")
        for block in self.blocks:
            block.chunk_tokens = chunk_tokens

    @property
    def token_chunking(self) -> int | None:
        """The blocks' `chunk_tokens` (see `set_token_chunking`)."""
        return self.blocks[0].chunk_tokens

    def record_bsa_selection(self, on: bool = True) -> None:
        """Makes every block-sparse call sow its selected-block mask [B, H, Mq, Mk] as `nnx.Intermediate`
        `bsa_selection`, a diagnostic for parity checks. Collect them by calling the model through
        `nnx.capture(model, nnx.Intermediate)` (or jit a function wrapped in `nnx.capture`): it returns
        (output, State) with the masks of block i under ["blocks"][i]["attn"]["bsa_selection"]."""
        for block in self.blocks:
            block.attn.record_selection = on

    def __call__(self, hidden_states: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array,
                 encoder_attention_mask: jax.Array | None = None, *, num_cond_latents: int = 0,
                 kv_cache: KVCache | None = None, return_kv: bool = False,
                 skip_crs_attn: bool = False) -> jax.Array | tuple[jax.Array, KVCache]:
        """Velocity prediction [B, C_out, T, H, W] float32 (and the KV cache of this call if return_kv).

        hidden_states: [B, C, T, H, W]; timestep: [B] or [B, T] (per latent frame);
        num_cond_latents: leading clean condition frames (or, with kv_cache, the cached ones);
        kv_cache: from an earlier call with return_kv on the condition frames.
        """
        grid = self.token_grid(hidden_states, timestep, encoder_hidden_states, num_cond_latents=num_cond_latents,
                               kv_cache=kv_cache)
        x, t_emb, text, text_mask = self.embed(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                                               grid)

        cp = self.context_parallel
        if cp is not None:
            x = cp.shard_tokens(x)
        keys, values = [], []
        for index, block in enumerate(self.blocks):
            if cp is not None:
                block, x = cp.gather_block(block, x)
            block_cache = None if kv_cache is None else (kv_cache[0][index], kv_cache[1][index])
            x, new_cache = block(x, text, text_mask, t_emb, grid, bsa=self.bsa, bsa_backend=self.bsa_backend,
                                 bsa_kernel_config=self.bsa_kernel_config, num_cond_latents=num_cond_latents,
                                 kv_cache=block_cache, return_kv=return_kv, skip_crs_attn=skip_crs_attn)
            if return_kv:
                keys.append(new_cache[0])
                values.append(new_cache[1])

        out = self.unembed(x, t_emb, grid)
        if return_kv:
            return out, (jnp.stack(keys), jnp.stack(values))
        return out
