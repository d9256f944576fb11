"""Synthetic q, k, v with a video's structure, for the BSA benchmark (benchmarks/bsa_attention.py).

Random normal q and k give every pair of 64-token blocks nearly the same pooled score: top-k then picks among
near-ties and CDF selection keeps ~98% of the blocks, which says nothing about BSA on a video. These inputs are made
the way the DiT makes its attention inputs from a video's tokens:

1. tokens [T, H, W, C] over the latent token grid, C the DiT's hidden size: a smooth random field (white noise
   filtered by a 3D Gaussian of `correlation_tokens` standard deviations, so neighbours are correlated and far tokens
   are not; unit variance per channel) with `num_objects` moving objects composited over it, back to front: soft-edged
   discs, each with its own feature vector (and `object_texture` of the field beneath it), crossing the frame in a
   straight line at a constant velocity;
2. the DiT's pre-attention LayerNorm (`attn_norm`, no affine; the adaLN shift and scale taken as 0);
3. the fused qkv projection, the model's `Linear` with a random lecun-normal kernel as at initialisation, except that
   the key projection is partly the query projection (`qk_alignment`): with independent random projections a token's
   query is as likely to repel its own key as to attract it, where trained attention prefers similar tokens;
4. the per-head RMSNorm on q and k (the model's `RMSNorm`, its weight set to `qk_norm_weight`) and the 3D RoPE
   (`rope_tables`, `apply_rope`), as `SelfAttention` applies them.

The trained model's weights are not used, so how peaked its attention is (the learned RMSNorm weights and how alike
its query and key projections are) is a choice: `qk_alignment` 0.5 and `qk_norm_weight` 1.5 by default. CDF selection
depends on them steeply. On one head of the 24x44x80 grid (the benchmark's seed; CPU, `select_blocks`) CDF 0.9 / 0.98
kept 70% / 90% of the key blocks at (alignment 0.5, weight 1.0), 61% / 86% at (0.8, 1.0), 20% / 50% at (0.5, 1.5),
0.5% / 2.9% at (0.5, 2.0) and 0.09% / 1.4% at (0.8, 1.5); in the last two, 58% / 22% and 85% / 16% of the query blocks
kept no block at all (the original's CDF rule keeps none when the best block alone holds more than the threshold;
measured before `select_blocks` came to keep the best block there, so those counts are now 1 and the fractions a
little higher).
Read every structured figure with its spec, which the benchmark prints; fitting these two knobs to the released
model's selection (`SelfAttention.record_selection` on a real video) would calibrate them.

Everything runs on the default device, jitted (`qkv_before_rope`, then `rope_3d`): O(N * C) work besides the
N x C x 3C projection (N tokens) and the field's three small banded contractions; at 168,960 tokens and C = 4096 the
field's padded noise is ~5.5 GiB of float32 on the device while it is made.

    python3 benchmarks/bsa_inputs.py --grid 24x44x80                      # statistics of the real-size inputs
    python3 benchmarks/bsa_inputs.py --grid 8x16x16 --heads 2 --head-dim 64 --json stats.json   # CPU, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from kernels import BSAParams, block_mask_from_indices, select_blocks, to_chunk_order
from longcat_jax.cli_logging import setup_cli_logging
from longcat_jax.errors import ConfigError
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.layers import LayerNorm, Linear, RMSNorm
from longcat_jax.models.dit.rope import apply_rope, rope_tables

log = logging.getLogger("bsa_inputs")

Grid = tuple[int, int, int]
RELEASED_DIT = DiTConfig()  # the released 13.6B model: hidden 4096, 32 heads of 128
FILTER_TRUNCATION = 3.0  # Gaussian taps out to 3 standard deviations
CDF_THRESHOLDS = (0.9, 0.98)  # the statistics report what CDF selection keeps at these thresholds
PAIR_SPARSITIES = (0.875, 0.9375, 0.96875)  # top-k points at which `pair_sharing` measures neighbouring query blocks


@dataclasses.dataclass(frozen=True)
class StructuredInputSpec:
    """The knobs of the synthetic video; the defaults are the benchmark's structured inputs.

    hidden_size / num_heads: the DiT's (head_dim = hidden_size / num_heads, a multiple of 8 for the 3D RoPE).
    correlation_tokens: (t, h, w) standard deviations, in latent tokens, of the Gaussian that smooths the field.
    num_objects: moving objects; object_radius and object_speed are (low, high) ranges, in tokens and tokens per
        latent frame, each object's drawn uniformly; object_texture: the field's share in an object's tokens.
    qk_alignment: the key projection is qk_alignment * the query's + sqrt(1 - qk_alignment^2) * an independent one.
    qk_norm_weight: the weight of the q and k RMSNorms (learned in the model, 1 at initialisation); attention logits
        scale with its square.
    """

    hidden_size: int = RELEASED_DIT.hidden_size
    num_heads: int = RELEASED_DIT.num_heads
    correlation_tokens: tuple[float, float, float] = (3.0, 2.0, 2.0)
    num_objects: int = 6
    object_radius: tuple[float, float] = (3.0, 8.0)
    object_speed: tuple[float, float] = (0.25, 1.0)
    object_texture: float = 0.3
    qk_alignment: float = 0.5
    qk_norm_weight: float = 1.5

    def __post_init__(self):
        problems = []
        if self.hidden_size <= 0 or self.num_heads <= 0 or self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} must be a positive multiple of num_heads {self.num_heads}")
        elif self.head_dim % 8:
            problems.append(f"head_dim {self.head_dim} must be a multiple of 8 for the 3D RoPE")
        if len(self.correlation_tokens) != 3 or min(self.correlation_tokens) <= 0:
            problems.append(f"correlation_tokens must be three positive lengths (t, h, w), got {self.correlation_tokens}")
        if self.num_objects < 0:
            problems.append(f"num_objects must be >= 0, got {self.num_objects}")
        for name in ("object_radius", "object_speed"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                problems.append(f"{name} must be a (low, high) range with 0 <= low <= high, got {(low, high)}")
        for name in ("object_texture", "qk_alignment"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.qk_norm_weight > 0:
            problems.append(f"qk_norm_weight must be > 0, got {self.qk_norm_weight}")
        if problems:
            raise ConfigError("structured BSA inputs: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _gaussian_taps(sigma: float) -> jax.Array:
    """Taps of a Gaussian of `sigma` out to FILTER_TRUNCATION sigmas, scaled to unit sum of squares (so filtered
    unit-variance white noise keeps unit variance). float32 [2r + 1]."""
    radius = math.ceil(FILTER_TRUNCATION * sigma)
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    taps = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / jnp.sqrt(jnp.sum(taps * taps))


def _filter_matrix(length: int, taps: jax.Array) -> jax.Array:
    """The banded matrix [length, length + 2r] of a correlation with `taps` that keeps only windows fully inside."""
    offset = jnp.arange(length + taps.shape[0] - 1)[None, :] - jnp.arange(length)[:, None]  # [length, length + 2r]
    inside = (offset >= 0) & (offset < taps.shape[0])
    return jnp.where(inside, taps[jnp.clip(offset, 0, taps.shape[0] - 1)], 0.0)


def smooth_field(key: jax.Array, grid: Grid, channels: int, correlation: tuple[float, float, float]) -> jax.Array:
    """Gaussian-smoothed white noise [T, H, W, channels] float32, unit variance per channel.

    The noise is drawn on a grid padded by each axis's filter radius and filtered without padding, so tokens at the
    edges are as smooth as inside. One banded matrix product per axis: three small contractions, O(N * channels *
    (axis length + 2r)) multiply-adds each, which the GPU's tensor cores take in milliseconds at the real size.
    """
    taps = [_gaussian_taps(sigma) for sigma in correlation]
    padded = tuple(n + t.shape[0] - 1 for n, t in zip(grid, taps))
    field = jax.random.normal(key, (*padded, channels), jnp.float32)  # [T + 2rt, H + 2rh, W + 2rw, C]
    field = jnp.einsum("tp,phwc->thwc", _filter_matrix(grid[0], taps[0]), field)
    field = jnp.einsum("hp,tpwc->thwc", _filter_matrix(grid[1], taps[1]), field)
    return jnp.einsum("wp,thpc->thwc", _filter_matrix(grid[2], taps[2]), field)  # [T, H, W, C]


def object_masks(key: jax.Array, grid: Grid, spec: StructuredInputSpec) -> jax.Array:
    """Coverage [O, T, H, W] float32 in [0, 1] of the moving objects: discs with a one-token soft edge, centred
    uniformly over the frame at the middle latent frame, each moving at its own constant velocity."""
    nt, nh, nw = grid
    keys = jax.random.split(key, 4)
    shape = (spec.num_objects,)
    centre = jax.random.uniform(keys[0], (*shape, 2)) * jnp.array([nh, nw], jnp.float32)  # [O, 2] at t = T/2
    angle = jax.random.uniform(keys[1], shape, maxval=2 * math.pi)
    speed = jax.random.uniform(keys[2], shape, minval=spec.object_speed[0], maxval=spec.object_speed[1])
    radius = jax.random.uniform(keys[3], shape, minval=spec.object_radius[0], maxval=spec.object_radius[1])
    t = jnp.arange(nt, dtype=jnp.float32) - (nt - 1) / 2
    centre_h = centre[:, None, 0] + speed[:, None] * jnp.sin(angle)[:, None] * t  # [O, T]
    centre_w = centre[:, None, 1] + speed[:, None] * jnp.cos(angle)[:, None] * t
    dh = jnp.arange(nh, dtype=jnp.float32)[None, None, :, None] - centre_h[:, :, None, None]  # [O, T, H, 1]
    dw = jnp.arange(nw, dtype=jnp.float32)[None, None, None, :] - centre_w[:, :, None, None]  # [O, T, 1, W]
    distance = jnp.sqrt(dh * dh + dw * dw)  # [O, T, H, W]
    return jax.nn.sigmoid((radius[:, None, None, None] - distance) / 0.5)


@functools.partial(jax.jit, static_argnames=("grid", "spec"))
def video_tokens(key: jax.Array, grid: Grid, spec: StructuredInputSpec) -> jax.Array:
    """The synthetic video's tokens [T, H, W, C] float32: the smooth field with the objects composited over it,
    back to front (each object covers what lies beneath it; a token's share of object o is its coverage by o times
    the part left uncovered by the objects in front)."""
    field_key, mask_key, feature_key = jax.random.split(key, 3)
    field = smooth_field(field_key, grid, spec.hidden_size, spec.correlation_tokens)
    if spec.num_objects == 0:
        return field
    masks = object_masks(mask_key, grid, spec)  # [O, T, H, W], objects in back-to-front order
    features = jax.random.normal(feature_key, (spec.num_objects, spec.hidden_size), jnp.float32)  # [O, C]
    uncovered_from = jnp.cumprod((1.0 - masks)[::-1], axis=0)[::-1]  # [O, T, H, W]: by objects o and in front
    in_front = jnp.concatenate([uncovered_from[1:], jnp.ones_like(masks[:1])], axis=0)
    share = masks * in_front  # [O, T, H, W]
    texture = spec.object_texture
    field_share = uncovered_from[0] + texture * jnp.sum(share, axis=0)  # [T, H, W]
    objects = jnp.einsum("othw,oc->thwc", share, features)  # [T, H, W, C]
    return field * field_share[..., None] + math.sqrt(1.0 - texture**2) * objects


def aligned_qkv_kernel(kernel: jax.Array, alignment: float) -> jax.Array:
    """A fused qkv kernel [C, 3C] whose key part is alignment * its query part + sqrt(1 - alignment^2) * its own
    (the same variance per entry as the other parts)."""
    w_q, w_k, w_v = jnp.split(kernel.astype(jnp.float32), 3, axis=1)
    w_k = alignment * w_q + math.sqrt(1.0 - alignment**2) * w_k
    return jnp.concatenate([w_q, w_k, w_v], axis=1).astype(kernel.dtype)


@functools.partial(jax.jit, static_argnames=("grid", "spec", "dtype"))
def qkv_before_rope(
    key: jax.Array, grid: Grid, spec: StructuredInputSpec, dtype=jnp.bfloat16
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q and k after the RMSNorm, before the RoPE, and v: [1, T*H*W, heads, head_dim] in `dtype`, raster order."""
    token_key, weight_key = jax.random.split(key)
    tokens = video_tokens(token_key, grid, spec).reshape(1, math.prod(grid), spec.hidden_size)  # [1, N, C]
    rngs = nnx.Rngs(params=weight_key)
    options = dict(rngs=rngs, dtype=dtype, param_dtype=dtype)
    x = LayerNorm(spec.hidden_size, affine=False, rngs=rngs)(tokens).astype(dtype)
    projection = Linear(spec.hidden_size, 3 * spec.hidden_size, **options)
    projection.kernel.set_value(aligned_qkv_kernel(projection.kernel.get_value(), spec.qk_alignment))
    qkv = projection(x).reshape(1, x.shape[1], 3, spec.num_heads, spec.head_dim)
    q_norm, k_norm = RMSNorm(spec.head_dim, **options), RMSNorm(spec.head_dim, **options)
    for norm in (q_norm, k_norm):
        norm.scale.set_value(jnp.full((spec.head_dim,), spec.qk_norm_weight, dtype))
    return q_norm(qkv[:, :, 0]), k_norm(qkv[:, :, 1]), qkv[:, :, 2]  # [1, N, H, D]


@functools.partial(jax.jit, static_argnames=("grid",))
def rope_3d(x: jax.Array, grid: Grid) -> jax.Array:
    """The DiT's 3D RoPE on x [B, T*H*W, heads, head_dim] in raster order of `grid`."""
    cos, sin = rope_tables(grid, x.shape[-1])
    return apply_rope(x, cos, sin)


def structured_qkv(
    key: jax.Array, grid: Grid, spec: StructuredInputSpec, dtype=jnp.bfloat16
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k, v [1, T*H*W, heads, head_dim] in `dtype`, tokens in (T, H, W) raster order: what the DiT's self
    attention hands to `attend` (q and k normed and rotated)."""
    q, k, v = qkv_before_rope(key, grid, spec, dtype)
    return rope_3d(q, grid), rope_3d(k, grid), v


def _shifted_pairs(a: jax.Array, b: jax.Array, offset: Grid) -> tuple[jax.Array, jax.Array]:
    """a at every token and b `offset` (t, h, w) tokens further on, over the tokens where both exist; a, b [T, H, W, ...]."""
    nt, nh, nw = a.shape[:3]
    return a[: nt - offset[0], : nh - offset[1], : nw - offset[2]], b[offset[0]:, offset[1]:, offset[2]:]


@functools.partial(jax.jit, static_argnames=("grid", "offsets"))
def _statistics_arrays(q, k, v, q_plain, k_plain, grid: Grid, offsets: tuple[tuple[str, Grid], ...]) -> dict:
    q, k, v, q_plain, k_plain = (x.astype(jnp.float32).reshape(*grid, *x.shape[2:]) for x in (q, k, v, q_plain, k_plain))
    values = v.reshape(*grid, -1)  # [T, H, W, C]: a linear map of the tokens
    head_dim = q.shape[-1]
    stats = {}
    for name, offset in offsets:
        a, b = _shifted_pairs(values, values, offset)
        cosine = jnp.sum(a * b, -1) * jax.lax.rsqrt(jnp.sum(a * a, -1) * jnp.sum(b * b, -1) + 1e-30)
        stats[f"v_cosine/{name}"] = jnp.mean(cosine)
        a, b = _shifted_pairs(q, k, offset)
        stats[f"logit/{name}"] = jnp.mean(jnp.sum(a * b, -1)) / math.sqrt(head_dim)
    rotation = jnp.max(jnp.abs(q - q_plain), axis=(-2, -1)).reshape(-1)  # [N]
    norms, norms_plain = jnp.sum(q * q, -1), jnp.sum(q_plain * q_plain, -1)
    stats.update({
        "q_rms": jnp.sqrt(jnp.mean(q * q)),
        "k_rms": jnp.sqrt(jnp.mean(k * k)),
        "v_rms": jnp.sqrt(jnp.mean(v * v)),
        "rope_change_at_origin": rotation[0],
        "rope_min_change_elsewhere": jnp.min(rotation[1:]),
        "rope_norm_change": jnp.max(jnp.abs(norms - norms_plain) / norms_plain),
        "own_logit_with_rope_minus_without": jnp.max(jnp.abs(jnp.sum(q * k, -1) - jnp.sum(q_plain * k_plain, -1)))
        / math.sqrt(head_dim),
    })
    return stats


@functools.partial(jax.jit, static_argnames=("grid", "params"))
def _selection_counts(q: jax.Array, k: jax.Array, grid: Grid, params: BSAParams) -> jax.Array:
    """Key blocks each query block selects (counts [B, H, Mq]), by the reference rule on q, k in raster order."""
    q_c, k_c = (to_chunk_order(x, grid, chunk) for x, chunk in ((q, params.chunk_3d_shape_q), (k, params.chunk_3d_shape_k)))
    return select_blocks(q_c, k_c, params)[1]


def cdf_selection(q: jax.Array, k: jax.Array, grid: Grid) -> dict:
    """For each CDF threshold of CDF_THRESHOLDS (4x4x4 chunks): the kept fraction of key blocks and the fraction of
    query blocks that kept none. {} where the chunks do not divide the grid."""
    if any(n % 4 for n in grid):
        return {}
    result = {}
    for threshold in CDF_THRESHOLDS:
        counts = _selection_counts(q, k, grid, BSAParams(sparsity=None, cdf_threshold=threshold))
        num_k_blocks = math.prod(grid) // 64
        result[str(threshold)] = {"kept": float(jnp.mean(counts)) / num_k_blocks, "empty": float(jnp.mean(counts == 0))}
    return result


@functools.partial(jax.jit, static_argnames=("grid", "params"))
def _pair_sharing_arrays(q: jax.Array, k: jax.Array, grid: Grid, params: BSAParams) -> dict:
    q_c, k_c = (to_chunk_order(x, grid, (4, 4, 4)) for x in (q, k))
    indices, counts = select_blocks(q_c, k_c, params)
    mask = block_mask_from_indices(indices, counts, k_c.shape[1] // 64)  # [B, H, Mq, Mk]
    first, second = mask[:, :, 0::2], mask[:, :, 1::2]  # query blocks 2m and 2m+1: chunk neighbours along W
    shared = jnp.sum(first & second, -1).astype(jnp.float32)  # [B, H, Mq / 2]
    union = jnp.sum(first | second, -1).astype(jnp.float32)
    return {"shared_of_own": jnp.mean(shared / jnp.sum(first, -1)),
            "useful_fraction": jnp.sum(jnp.sum(first, -1) + jnp.sum(second, -1)) / (2 * jnp.sum(union))}


def pair_sharing(q: jax.Array, k: jax.Array, grid: Grid) -> dict:
    """For each top-k sparsity of PAIR_SPARSITIES (4x4x4 chunks), how much two neighbouring query blocks (2m, 2m+1 in
    chunk order) share their selected key blocks: `shared_of_own`, the mean fraction of block 2m's list that 2m+1 also
    selected; `useful_fraction`, the share of a 128-row tile's work that either block asked for, were the pair run
    as one tile over the union of its lists ((|A| + |B|) / (2 |A u B|), over all pairs). {} where the chunks do not
    divide the grid or the query blocks are odd in number."""
    if any(n % 4 for n in grid) or (math.prod(grid) // 64) % 2:
        return {}
    return {str(sparsity): {name: float(value) for name, value in
                            _pair_sharing_arrays(q, k, grid, BSAParams(sparsity=sparsity)).items()}
            for sparsity in PAIR_SPARSITIES}


def input_statistics(key: jax.Array, grid: Grid, spec: StructuredInputSpec) -> dict:
    """What the inputs look like: the cosine similarity of v (a linear map of the tokens) and the mean q.k logit
    between neighbouring tokens and tokens half the grid apart ("far"); the RMS of q, k and v; whether the RoPE
    rotates every token but the one at position (0, 0, 0), keeping norms and each token's own q.k; and what CDF
    selection keeps of them (`cdf_selection`); how much neighbouring query blocks share their top-k selections
    (`pair_sharing`)."""
    nt, nh, nw = grid
    offsets = (("t+1", (1, 0, 0)), ("h+1", (0, 1, 0)), ("w+1", (0, 0, 1)), ("far", (nt // 2, nh // 2, nw // 2)))
    q_plain, k_plain, v = qkv_before_rope(key, grid, spec)
    q, k = rope_3d(q_plain, grid), rope_3d(k_plain, grid)
    values = {name: float(value) for name, value in _statistics_arrays(q, k, v, q_plain, k_plain, grid, offsets).items()}
    result = {"grid": list(grid), "spec": dataclasses.asdict(spec), "shape": list(q.shape), "dtype": str(q.dtype)}
    for group in ("v_cosine", "logit"):
        result[group] = {name: values.pop(f"{group}/{name}") for name, _ in offsets}
    return {**result, **values, "cdf_selection": cdf_selection(q, k, grid), "pair_sharing": pair_sharing(q, k, grid)}


def parse_grid(text: str) -> Grid:
    """'TxHxW' -> (T, H, W); refuses anything else with the expected form."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ConfigError(f"a latent grid is TxHxW of positive ints, like 24x44x80; got {text!r}")
    return tuple(int(part) for part in parts)


def grid_argument(text: str) -> Grid:
    """`parse_grid` as an argparse type: a bad grid is refused with its message, not a traceback."""
    try:
        return parse_grid(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="24x44x80", help="latent token grid TxHxW")
    parser.add_argument("--heads", type=int, default=RELEASED_DIT.num_heads)
    parser.add_argument("--head-dim", type=int, default=RELEASED_DIT.head_dim)
    parser.add_argument("--seed", type=int, help="random seed (default: the number of tokens, as the benchmark uses)")
    parser.add_argument("--qk-alignment", type=float, default=StructuredInputSpec.qk_alignment)
    parser.add_argument("--qk-norm-weight", type=float, default=StructuredInputSpec.qk_norm_weight)
    parser.add_argument("--json", help="also write the statistics to this file")
    args = parser.parse_args()
    setup_cli_logging()  # INFO with times (an import may have set up the root logger already)
    try:
        grid = parse_grid(args.grid)
        spec = StructuredInputSpec(hidden_size=args.heads * args.head_dim, num_heads=args.heads,
                                   qk_alignment=args.qk_alignment, qk_norm_weight=args.qk_norm_weight)
    except ConfigError as error:
        parser.error(str(error))
    key = jax.random.key(math.prod(grid) if args.seed is None else args.seed)
    jax.block_until_ready(structured_qkv(key, grid, spec))
    start = time.perf_counter()
    jax.block_until_ready(structured_qkv(key, grid, spec))  # compiled: the generation time alone
    log.info("generated %s tokens in %.1f ms (compiled) on %s", math.prod(grid), (time.perf_counter() - start) * 1e3,
             jax.devices()[0].device_kind)
    result = input_statistics(key, grid, spec)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
