"""Device-memory estimates of each model's weights and of the activations of one call, from the configs and the
token counts alone (nothing is loaded or compiled), for the plan to decide placements with.

Weights are counted exactly from the architecture (a test checks the counts against the built modules); the VAE's,
whose layer plan is long, from its abstract module (built once per config, allocating nothing).

Activations are estimates. The DiT's counts the buffers alive at the peak of a block (the residual stream, then the
largest of the self-attention, cross-attention and FFN phases, the last two per chunk of tokens when the blocks run
chunked) plus the attention's own temporaries (XLA's dense attention on the CPU keeps [B, H, Sq, Sk] float32 scores;
cuDNN's fused attention and the BSA kernels keep none; BSA's block scores are [B, H, Sq/64, Sk/64] float32). Where the
BSA forward runs in key ranges (`kernels.key_ranges`: the Triton kernel at 168,960 tokens, the FP8 one there with
lists of 128 key blocks or more; the bf16 Mosaic one runs in one launch with phased walks since the thirty-seventh
session, and ran in three ranges at top-k 0.875 before), each range's output lives until the merge, up to
(ranges - 1) x [B, Sq, H, D] more than one launch; that is not counted on its own, and the counts covered it where it
was measured: XLA's buffer assignment of one block at 168,960 tokens, bf16, on an H100 (jax 0.11.2,
`benchmarks/memory_budget.py --cases refine168k_bsa,refine168k_bsa0875 --modes analyze`, 2026-12-06) held 13.86 GiB of
temporaries in three key ranges (top-k 0.875) against 11.77 GiB in one launch (0.9375) with all tokens at once, and
11.77 GiB in both with 32,768- or 8,192-token chunks; with the block's input and output (2.58 GiB, which XLA counts as
arguments and output) that is 16.44 / 14.35 GiB with all tokens and 14.35 GiB chunked, against these counts' 18.67 and
16.01 GiB (the Triton and FP8 kernels' two ranges were not measured; the bf16 whole BSA call at 0.875 in one phased
launch kept 5.37 GiB beside its inputs where the three ranges had kept 7.91, H100, BENCHMARKS.md). The whole
resident step peaked 17.4 GiB above its weights on an H200 (2026-12-03; these counts: 18.6 GiB). The GEMMs' float32
results are not kept (XLA writes the rounded result), except the output projections', whose bias is added in float32.
A Linear with run-time LoRAs joins their low-rank part to its own GEMM (`longcat_jax.models.dit.layers`), which costs
a copy of its input; the earlier form, a second GEMM added in float32, kept two float32 results per Linear and ran
the 720p refinement out of memory under a 24 GiB budget on an H200 (2026-12-03). A quantized Linear with run-time LoRAs
(`longcat_jax.models.dit.quantized_linear`) runs over at most `LORA_CHUNK_ROWS` rows at a time and keeps one chunk's
float32 results: its GEMM's and the LoRAs' with FP8 compute (an FP8 GEMM cannot take them), one joined GEMM's
weight-only (`quantized_lora_bytes`; counted from what the code computes, not yet checked against XLA on a GPU).
Without LoRAs a quantized DiT is counted as the bf16 one: the FP8 step at 168,960 tokens under a 24 GiB cap (H200,
`benchmarks/memory_budget.py --quantize fp8`, 2026-12-03) had 17.33 GiB of block temporaries (bf16: 13.86 GiB) and
peaked at 19.4 GiB, below these counts' 19.53 GiB.
The VAE's is per pixel of a frame (or of a tile), from measured peaks. Each constant below says where it comes from.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp
import numpy as np

from kernels import BSAParams
from longcat_jax.models.dit.block import frame_group
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.quantized_linear import LORA_CHUNK_ROWS, token_chunks
from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.vae.config import VAEConfig
from longcat_jax.quantization import QUANTIZED_BLOCK_LINEARS, QuantScheme, scheme_for
from longcat_jax.quantization.modes import FP8_COMPUTE

# Bytes of float32.
F32 = 4
# VAE decode, bytes per pixel of the frame (or of the tile) decoded at once, bf16 at the released width (base_dim
# 96): the peak of `benchmarks/vae.py` on an H100 (BENCHMARKS.md: 4.21 GiB at 480x832x93, untiled, batch 1) less
# the weights and the decoded video, over 480 x 832 pixels (the 704x1280 run gives 8% less per pixel). Scaled by
# the width and the activation dtype for other configs. The encoder mirrors the decoder's widths at each
# resolution; its peak was not measured and is taken as the same per pixel.
VAE_BYTES_PER_PIXEL = 9216
VAE_MEASURED_BASE_DIM = 96
# Copies of the decoded video alive at once (the decoder's output, the clamped one and its layout change).
VAE_OUTPUT_COPIES = 3
# float32 copies of the latents [B, C, T, h, w] in a denoising step (latents, the DiT input, its prediction, the
# update).
LATENT_COPIES = 4


@dataclasses.dataclass(frozen=True)
class DiTWeights:
    """Bytes of the DiT's weights: one block, the layers outside the blocks, and the block count."""

    block: int
    ends: int
    depth: int

    @property
    def total(self) -> int:
        return self.ends + self.depth * self.block


def _linear_bytes(in_features: int, out_features: int, bias: bool, param_bytes: int, quantized) -> int:
    """A Linear's weights: kernel (+ bias), or a quantized kernel with per-output-channel float32 scales."""
    bias_bytes = out_features * param_bytes if bias else 0
    if quantized is None:
        return in_features * out_features * param_bytes + bias_bytes
    return in_features * out_features * np.dtype(quantized.weight.dtype).itemsize + out_features * F32 + bias_bytes


def block_linears(config: DiTConfig) -> dict[tuple[str, ...], tuple[int, int, bool]]:
    """Each Linear of a DiT block: its module path in the block -> (in features, out features, has a bias)."""
    c, ct, ffn = config.hidden_size, config.adaln_tembed_dim, config.ffn_hidden_size
    return {
        ("attn", "qkv"): (c, 3 * c, True),
        ("attn", "proj"): (c, c, True),
        ("cross_attn", "q"): (c, c, True),
        ("cross_attn", "kv"): (c, 2 * c, True),
        ("cross_attn", "proj"): (c, c, True),
        ("ffn", "w1"): (c, ffn, False),
        ("ffn", "w2"): (ffn, c, False),
        ("ffn", "w3"): (c, ffn, False),
        ("adaln",): (ct, 6 * c, True),
    }


def dit_weights(config: DiTConfig, dtype=jnp.bfloat16, quantize: str | None = None) -> DiTWeights:
    """The DiT's weight bytes with parameters in `dtype` and the block Linears of `quantize` (a
    `longcat_jax.quantization` mode; None or 'none': unquantized)."""
    p = np.dtype(dtype).itemsize
    scheme = scheme_for(quantize)
    c, ct, heads_dim = config.hidden_size, config.adaln_tembed_dim, config.head_dim
    block = sum(_linear_bytes(i, o, b, p, scheme if path in QUANTIZED_BLOCK_LINEARS else None)
                for path, (i, o, b) in block_linears(config).items())
    block += (2 * c + 4 * heads_dim) * p  # cross_norm scale and bias; q/k RMSNorm scales of both attentions
    patch = math.prod(config.patch_size)
    ends = (patch * config.in_channels * c + c  # patch embedding
            + config.frequency_embedding_size * ct + ct + ct * ct + ct  # timestep embedder
            + config.caption_channels * c + c + c * c + c  # caption embedder
            + ct * 2 * c + 2 * c + c * patch * config.out_channels + patch * config.out_channels) * p  # final layer
    return DiTWeights(block, ends, config.depth)


def text_encoder_weights(config: UMT5Config, dtype=jnp.bfloat16) -> int:
    """The UMT5 encoder's weight bytes: embedding, per layer q/k/v/o, gated FFN, two norms and a position bias."""
    c, inner, ff = config.d_model, config.inner_dim, config.d_ff
    layer = 4 * c * inner + 3 * c * ff + 2 * c + config.relative_attention_num_buckets * config.num_heads
    return (config.vocab_size * c + config.num_layers * layer + c) * np.dtype(dtype).itemsize


@functools.lru_cache(maxsize=8)
def _vae_parameter_count(config: VAEConfig) -> int:
    from flax import nnx

    from longcat_jax.checkpoint.param_tree import abstract_model
    from longcat_jax.models.vae.autoencoder import WanVAE

    _, _, shapes = abstract_model(lambda: WanVAE(config, rngs=nnx.Rngs(0)))
    return sum(math.prod(leaf.shape) for leaf in shapes.values())


def vae_weights(config: VAEConfig, dtype=jnp.bfloat16) -> int:
    """The VAE's weight bytes (its abstract module's parameter count; built once per config)."""
    return _vae_parameter_count(config) * np.dtype(dtype).itemsize


def text_encoder_activations(config: UMT5Config, prompts: int, length: int) -> int:
    """Peak activation bytes of encoding `prompts` prompts of `length` tokens: the float32 residual stream and one
    layer's FFN and attention temporaries (scores [B, H, L, L] float32, with the position bias)."""
    tokens = prompts * length
    stream = 3 * tokens * config.d_model * F32
    ffn = 3 * tokens * config.d_ff * F32
    attention = 2 * prompts * config.num_heads * length * length * F32 + config.num_heads * length * length * F32
    return stream + max(ffn, attention)


@dataclasses.dataclass(frozen=True)
class DiTCall:
    """The shape of one DiT forward: `batch` videos of a `grid` (T, H, W) of tokens, `text_len` text tokens,
    `cond_tokens` cached condition tokens per video (a KV cache), the self attention's BSA (None: dense), whether it
    returns its keys and values (caching a condition), and whether LoRAs run with it (`lora`)."""

    batch: int
    grid: tuple[int, int, int]
    text_len: int
    bsa: BSAParams | None = None
    cond_tokens: int = 0
    return_kv: bool = False
    lora: bool = False

    @property
    def tokens(self) -> int:
        return math.prod(self.grid)


def dense_attention_is_fused(platform: str, act_bytes: int, head_dim: int) -> bool:
    """Whether dense attention runs fused (cuDNN flash attention: no score matrix kept), as
    `longcat_jax.models.dit.attention.dense_attention` decides: on a GPU, 16-bit, head_dim <= 128 and % 8 == 0."""
    return platform == "gpu" and act_bytes == 2 and head_dim <= 128 and head_dim % 8 == 0


def quantized_lora_bytes(scheme: QuantScheme, batch: int, tokens: int, in_features: int, out_features: int,
                         act_bytes: int) -> int:
    """Bytes a quantized Linear with run-time LoRAs keeps beside its input and output while it runs over `batch` x
    `tokens` rows: for each chunk of at most LORA_CHUNK_ROWS rows (`quantized_linear.token_chunks`; one chunk of
    all rows when they are fewer), with FP8 compute the GEMM's float32 result and the LoRAs' float32 update (both
    [rows, out], summed and rounded by the chunk's last step) and the chunk's activations in e4m3; weight-only one
    joined GEMM's float32 result and its joined input in the activation dtype (a copy, as the bf16 Linear's). The
    LoRAs' rank-wide parts ([rows, rank], a few MiB) and a weight-only layer's dequantized kernel (at most 96 MiB in
    bf16, one Linear at a time) are left out."""
    _, per_chunk = token_chunks(batch, tokens, LORA_CHUNK_ROWS)
    if scheme.compute == FP8_COMPUTE:
        return batch * per_chunk * (2 * F32 * out_features + in_features)
    return batch * per_chunk * (F32 * out_features + act_bytes * in_features)


def dit_activations(config: DiTConfig, call: DiTCall, *, act_bytes: int, chunk_tokens: int | None,
                    platform: str, quantize: str | None = None) -> int:
    """Estimated peak bytes of one DiT forward's activations (weights excluded), with the blocks' cross attention
    and FFN over `chunk_tokens`-token frame groups (None: all tokens) on `platform` ('gpu' or 'cpu'), the block
    Linears quantized with `quantize` (a `longcat_jax.quantization` mode; None or 'none': not quantized)."""
    b, n = call.batch, call.tokens
    c, f, heads = config.hidden_size, config.ffn_hidden_size, config.num_heads
    a = act_bytes
    frames = call.grid[0]
    chunk = frame_group(frames, n // frames, chunk_tokens) * (n // frames)
    keys = n + call.cond_tokens
    fused = dense_attention_is_fused(platform, a, config.head_dim)
    scheme = scheme_for(quantize)
    quantized_lora = scheme is not None and call.lora
    # Per token of the residual stream: the block's input and output.
    stream = 2 * a * c
    # With LoRAs: bytes per input feature of a bf16 Linear's input copy, joined to its LoRAs' part. Every Linear of
    # these phases is quantized when `quantize` is set (`QUANTIZED_BLOCK_LINEARS`); those keep the bytes of
    # `quantized_lora_bytes` instead, among them their float32 results (`proj_f32` then 0: counted there).
    lora = a if call.lora and not quantized_lora else 0
    proj_f32 = 0 if quantized_lora else F32

    def linear_extra(rows_batch: int, tokens: int, in_features: int, out_features: int) -> int:
        if not quantized_lora:
            return 0
        return quantized_lora_bytes(scheme, rows_batch, tokens, in_features, out_features, a)

    # Self attention, projecting: the modulated input and qkv; attending: roped q, k, v, their chunk-ordered copies
    # for BSA (the CPU reference keeps float32 ones), the output and the output projection's float32 result.
    reorder = 0 if call.bsa is None else (3 * a * c if platform == "gpu" else 3 * F32 * c)
    self_attention = max(b * n * (a * c + 3 * a * c + lora * c) + linear_extra(b, n, c, 3 * c),
                         b * n * (3 * a * c + reorder + a * c + proj_f32 * c + lora * c) + linear_extra(b, n, c, c))
    # Cross attention: normed tokens, q, attention output, projection (bf16 and float32); kv reads the text.
    cross = b * chunk * (4 * a * c + proj_f32 * c + lora * c) + max(linear_extra(b, chunk, c, c),
                                                                     linear_extra(b, call.text_len, c, 2 * c))
    # FFN: modulated input, w1 and w3 outputs and their product, the output's float32 sum with the residual.
    ffn = b * chunk * (a * c + 3 * a * f + F32 * c + lora * f) + max(linear_extra(b, chunk, c, f),
                                                                      linear_extra(b, chunk, f, c))
    peak = b * n * stream + max(self_attention, cross, ffn)
    if call.cond_tokens:
        peak += 2 * b * call.cond_tokens * c * a * 2  # the cache broadcast to the batch and joined to the new keys
    if call.bsa is not None and frames > 1:
        blocks_q, blocks_k = n // call.bsa.chunk_size_q, keys // call.bsa.chunk_size_k
        peak += 2 * b * heads * blocks_q * blocks_k * F32  # block scores and their softmax / selection
    elif not fused:
        peak += 2 * b * heads * n * keys * F32  # XLA's dense attention: scores and probabilities
    if not fused:
        peak += 2 * b * heads * chunk * call.text_len * F32  # cross attention's scores
    text = 3 * b * call.text_len * c * a
    latents = LATENT_COPIES * b * n * math.prod(config.patch_size) * config.in_channels * F32
    kv_out = 2 * config.depth * b * n * c * a if call.return_kv else 0
    return peak + text + latents + kv_out


def dit_cache_bytes(config: DiTConfig, cond_tokens: int, act_bytes: int) -> int:
    """A KV cache of `cond_tokens` tokens of one video: k and v of every block (kept through the stage)."""
    return 2 * config.depth * cond_tokens * config.hidden_size * act_bytes


def vae_activations(config: VAEConfig, *, frames: int, height: int, width: int, act_bytes: int,
                    tile: int | None, encode: bool = False) -> int:
    """Estimated peak bytes of decoding (or encoding) a `frames` x `height` x `width` video, whole frames at once
    (`tile` None) or in `tile` x `tile` pixel tiles: activations per pixel at once, and the whole video."""
    width_scale = config.decoder_dim / VAE_MEASURED_BASE_DIM if not encode else config.base_dim / VAE_MEASURED_BASE_DIM
    per_pixel = VAE_BYTES_PER_PIXEL * width_scale * act_bytes / 2
    at_once = height * width if tile is None else min(tile, height) * min(tile, width)
    video = frames * height * width * config.out_channels * act_bytes
    # Tiled: the previous row of decoded tiles is kept for blending.
    rows = 0 if tile is None else frames * min(tile, height) * width * config.out_channels * act_bytes
    latents = frames // config.scale_factor_temporal + 1
    latent_bytes = 2 * latents * (height // 8) * (width // 8) * config.z_dim * F32
    return int(per_pixel * at_once) + VAE_OUTPUT_COPIES * video + rows + latent_bytes


def dit_flops(config: DiTConfig, call: DiTCall) -> float:
    """Floating-point operations of one DiT forward: the block matmuls on every token, self attention (the BSA
    density of top-k selection; CDF selection counted dense) and cross attention."""
    b, n = call.batch, call.tokens
    c, f = config.hidden_size, config.ffn_hidden_size
    per_token = 2 * (3 * c * c + c * c + c * c + c * c + 3 * c * f)  # qkv, proj, cross q and proj, FFN
    keys = n + call.cond_tokens
    density = 1.0
    if call.bsa is not None and call.grid[0] > 1 and call.bsa.cdf_threshold is None:
        density = max(1.0 - call.bsa.sparsity, call.bsa.chunk_size_k / keys)
    attention = 4 * n * keys * c * density + 4 * n * call.text_len * c
    return config.depth * b * (n * per_token + attention)
