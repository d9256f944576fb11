"""Public entry point: block-sparse attention on (T, H, W)-ordered tokens in the DiT's layout.

`bsa_attention` reorders q, k, v into 3D-chunk order, selects key blocks per query block and runs
attention over the selected blocks only, then restores raster order. Grids that the chunks do not
divide are padded to whole chunks and the result is that of the real tokens alone (`padding`).
`sparse_attention_chunked` is the lower level: chunk-ordered tokens plus given index lists.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kernels import fp8_operands, layout, pallas_chunking, pallas_topk, pallas_topk_with_v, reference, selection
from kernels.errors import BSAConfigError, BSAInputError
from kernels.padding import GridPadding
from kernels.params import BSAParams
from kernels.sparse_attention import KernelConfig, fp8_sparse_attention_with_lse, on_hopper, sparse_attention

BACKENDS = ("auto", "reference", "pallas", "pallas_interpret")
PALLAS_HEAD_DIMS = (64, 128)
_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def resolve_backend(backend: str) -> str:
    """The concrete backend for `backend` ("auto": the Pallas kernel on a GPU, the reference elsewhere)."""
    if backend not in BACKENDS:
        raise BSAConfigError(f"unknown BSA backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "reference"
    if backend == "pallas" and jax.default_backend() != "gpu":
        raise BSAConfigError(
            f"BSA backend 'pallas' runs its kernels on an NVIDIA GPU, but JAX runs on {jax.default_backend()} here; "
            "use 'pallas_interpret' (the same kernels through the Pallas interpreters) or 'reference'"
        )
    return backend


def fp8_forward_available(backend: str = "auto") -> bool:
    """Whether `KernelConfig(fp8=True)` can run on `backend`: the Mosaic kernel on a Hopper GPU, its interpreter, or
    the reference backend's emulation (a question, so "pallas" off a GPU answers False rather than raising)."""
    backend = backend if backend == "pallas" else resolve_backend(backend)
    return backend != "pallas" or on_hopper()


def check_pallas_shapes(head_dim: int, chunk_size_q: int, chunk_size_k: int) -> None:
    """Refuses (BSAInputError, naming the fix) a head_dim or block sizes the Pallas kernels cannot run: for callers
    that know them before any work (a training run's config) as well as for `bsa_attention`."""
    if head_dim not in PALLAS_HEAD_DIMS:
        raise BSAInputError(
            f"the Pallas BSA kernel supports head_dim {PALLAS_HEAD_DIMS}, got {head_dim}; "
            "use backend='reference' for other sizes"
        )
    for name, size in (("q", chunk_size_q), ("k", chunk_size_k)):
        if size < 16 or size & (size - 1):
            raise BSAInputError(
                f"the Pallas BSA kernel needs {name} blocks of a power-of-two size >= 16 tokens, got a "
                f"{size}-token chunk; pick a chunk_3d_shape_{name} like (4, 4, 4) or use backend='reference'"
            )


def _check_qkv(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise BSAInputError(f"{name} must be [B, S, H, D], got shape {x.shape}")
        if x.dtype not in _FLOAT_DTYPES:
            raise BSAInputError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if k.shape != v.shape:
        raise BSAInputError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise BSAInputError(
            f"q {q.shape} and k {k.shape} must agree in batch, heads and head_dim ([B, S, H, D] layout)"
        )


def sparse_attention_chunked(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    counts: jax.Array,
    chunk_size_q: int,
    chunk_size_k: int,
    *,
    backend: str = "auto",
    kernel_config: KernelConfig | None = None,
    key_padding: GridPadding | None = None,
) -> jax.Array:
    """Attention of chunk-ordered q [B, Sq, H, D] over the selected key blocks of k, v [B, Sk, H, D].

    indices [B, H, Mq, K_max] int32 (entries past `counts` are ignored), counts [B, H, Mq] int32 in 0..K_max.
    Softmax scale 1/sqrt(D); a query block with count 0 outputs 0. Returns [B, Sq, H, D] in q's dtype.
    Differentiable on every backend (the Pallas ones through their own backward kernels), except with FP8 operands.
    kernel_config: which forward kernel and its launch settings (None: the defaults tuned on an H100); with
    `fp8=True` the reference backend emulates the FP8 kernel's roundings.
    key_padding: None, or the `GridPadding` of k's grid when k, v hold that grid padded to whole chunks (in
    chunk order): the padded keys then get no weight.
    """
    _check_qkv(q, k, v)
    b, sq, h, _ = q.shape
    sk = k.shape[1]
    if sq % chunk_size_q or sk % chunk_size_k:
        raise BSAInputError(
            f"sequence lengths {sq} (q) and {sk} (k) must be multiples of the block sizes "
            f"{chunk_size_q} and {chunk_size_k}"
        )
    mq = sq // chunk_size_q
    if indices.ndim != 4 or indices.shape[:3] != (b, h, mq) or counts.shape != (b, h, mq):
        raise BSAInputError(
            f"indices must be [B, H, Mq, K_max] = [{b}, {h}, {mq}, K] and counts [{b}, {h}, {mq}], "
            f"got {indices.shape} and {counts.shape}"
        )
    _check_counts(counts, indices.shape[-1])
    if key_padding is not None:
        _check_key_padding(key_padding, sk, chunk_size_k)
        key_padding = key_padding if key_padding.needed else None
    backend = resolve_backend(backend)
    if backend == "reference":
        key_valid = None if key_padding is None else jnp.asarray(key_padding.real_token_mask())
        fp8 = kernel_config is not None and kernel_config.fp8
        return _reference_attention(q, k, v, indices, counts, chunk_size_q, chunk_size_k, key_valid, fp8)
    check_pallas_shapes(q.shape[-1], chunk_size_q, chunk_size_k)
    return sparse_attention(
        q, k, v, indices.astype(jnp.int32), counts.astype(jnp.int32), chunk_size_q, chunk_size_k,
        _kernel_config(kernel_config, backend), None, key_padding,
    )


def _check_counts(counts, width: int) -> None:
    """Refuses concrete counts outside 0..K_max (the index lists' width): past it the backends read different
    entries. Traced counts (inside `jit`) cannot be read here; keeping them in range is the caller's part."""
    if isinstance(counts, jax.core.Tracer) or not getattr(counts, "is_fully_addressable", True):
        return
    counts = np.asarray(counts)  # on the host (a copy and a wait in an eager call): jnp ops would be traced
    if counts.size == 0:
        return
    low, high = int(counts.min()), int(counts.max())
    if low < 0 or high > width:
        raise BSAInputError(
            f"counts must be in 0..{width} (the index lists' width K_max), got {low}..{high}; a count says how many "
            "of a query block's index entries are real"
        )


def _check_key_padding(key_padding: GridPadding, sk: int, chunk_size_k: int) -> None:
    if not isinstance(key_padding, GridPadding):
        raise BSAConfigError(f"key_padding must be a kernels.GridPadding or None, got {type(key_padding).__name__}")
    if key_padding.block_size != chunk_size_k or math.prod(key_padding.padded) != sk:
        raise BSAInputError(
            f"key_padding pads {key_padding.latent} to {key_padding.padded} in {key_padding.chunk} chunks "
            f"({math.prod(key_padding.padded)} tokens, {key_padding.block_size} a block), but k has {sk} tokens "
            f"in blocks of {chunk_size_k}"
        )


def _reference_attention(q, k, v, indices, counts, chunk_size_q, chunk_size_k, key_valid, fp8: bool):
    """`reference.blocked_attention` on chunk-ordered tokens; with `fp8` on the FP8 kernel's roundings of q, k, v and
    of the softmax weights (its emulation: inference only, like the kernel)."""
    if not fp8:
        return reference.blocked_attention(q, k, v, indices, counts, chunk_size_q, chunk_size_k, key_valid)

    def emulated(q32, k32, v32):
        rounding = fp8_operands.emulated_weight_rounding(v32, chunk_size_k)
        q32, k32, v32 = fp8_operands.emulated_attention_inputs(q32, k32, v32, chunk_size_q, chunk_size_k)
        out = reference.blocked_attention(q32, k32, v32, indices, counts, chunk_size_q, chunk_size_k, key_valid,
                                          round_weights=rounding)
        return out.astype(q.dtype)

    return fp8_operands.inference_only(emulated, q, k, v)


def _fp8_attention(q, k, v, grid_q: GridPadding, grid_k: GridPadding, params: BSAParams, config: KernelConfig,
                   interpret: bool):
    """The Pallas whole call on e4m3 operands, q, k, v [B, S, H, D] on padded grids in raster order: the chunking
    kernels write e4m3 with per-block scales (V transposed), then the FP8 Mosaic forward. Returns raster order."""
    chunk_q, chunk_k = params.chunk_3d_shape_q, params.chunk_3d_shape_k
    num_k_blocks = math.prod(grid_k.blocks)
    # refused before any kernel is traced
    config.check_fp8(q, params.chunk_size_q, params.chunk_size_k, selection.max_selected(params, num_k_blocks))
    q8, pooled_q, q_scales = pallas_chunking.chunk_to_e4m3(q, grid_q.padded, chunk_q, interpret=interpret)
    k8, pooled_k, k_scales = pallas_chunking.chunk_to_e4m3(k, grid_k.padded, chunk_k, interpret=interpret)
    if params.cdf_threshold is None and pallas_topk.fits(num_k_blocks):
        # the top-k and V's pass in one launch (V's reads under the top-k's compares)
        indices, v_t, v_scales = pallas_topk_with_v.top_k_and_v_to_e4m3(
            _block_scores(pooled_q, pooled_k, grid_q, grid_k), selection.max_selected(params, num_k_blocks), v,
            grid_k.padded, chunk_k, interpret=interpret, split_rows=config.top_k_row_pieces)
        counts = selection.top_k_counts(params, indices.shape[:-1], num_k_blocks)
    else:
        v_t, v_scales = pallas_chunking.chunk_to_e4m3_transposed(v, grid_k.padded, chunk_k, interpret=interpret)
        indices, counts = _select(pooled_q, pooled_k, grid_q, grid_k, params, q.shape[-1],
                                  "pallas_interpret" if interpret else "pallas", config.top_k_row_pieces)
    operands = fp8_operands.Fp8Operands(q8, k8, v_t, q_scales, k_scales, v_scales)
    key_padding = grid_k if grid_k.needed else None
    out, _ = fp8_sparse_attention_with_lse(  # the selection writes each list ascending
        operands, indices, counts, config, (grid_q.padded, chunk_q), key_padding, q.dtype, ascending=True
    )
    return out


def _kernel_config(kernel_config: KernelConfig | None, backend: str) -> KernelConfig:
    """The kernel settings of a Pallas backend: the given ones or the defaults, interpreted on "pallas_interpret"."""
    config = kernel_config or KernelConfig()
    return config.interpreted() if backend == "pallas_interpret" else config


def _select(pooled_q, pooled_k, grid_q: GridPadding, grid_k: GridPadding, params: BSAParams, head_dim: int,
            backend: str, top_k_row_pieces: bool | None = None):
    """Selected key blocks (indices [B, H, Mq, K_max], counts [B, H, Mq]) from the means [B, H, M, D] float32 of
    the padded blocks (padding counted as zeros), which are rescaled to means over the real tokens first."""
    scores = _block_scores(pooled_q, pooled_k, grid_q, grid_k)
    return selection.select_from_scores(scores, params, head_dim, backend=backend, top_k_row_pieces=top_k_row_pieces)


def _block_scores(pooled_q, pooled_k, grid_q: GridPadding, grid_k: GridPadding) -> jax.Array:
    """Block scores [B, H, Mq, Mk] float32 from the means [B, H, M, D] of the padded blocks (padding counted as
    zeros), rescaled to means over the real tokens first."""
    return selection.pooled_scores(grid_q.real_means(pooled_q), grid_k.real_means(pooled_k))


@functools.partial(
    jax.jit, static_argnames=("latent_shape_q", "latent_shape_k", "params", "backend", "kernel_config")
)
def _bsa_attention(q, k, v, latent_shape_q, latent_shape_k, params, backend, kernel_config):
    chunk_q, chunk_k = params.chunk_3d_shape_q, params.chunk_3d_shape_k
    grid_q, grid_k = GridPadding(latent_shape_q, chunk_q), GridPadding(latent_shape_k, chunk_k)
    key_padding = grid_k if grid_k.needed else None
    q, k, v = grid_q.pad(q), grid_k.pad(k), grid_k.pad(v)  # each unchanged where the chunks divide its grid
    padded_q, padded_k = grid_q.padded, grid_k.padded
    fp8 = kernel_config is not None and kernel_config.fp8
    if backend == "reference":
        q_c = layout.to_chunk_order(q, padded_q, chunk_q)  # [B, Sq, H, D]
        k_c = layout.to_chunk_order(k, padded_k, chunk_k)
        v_c = layout.to_chunk_order(v, padded_k, chunk_k)
        pooled_q = selection.pool_blocks(q_c, params.chunk_size_q)  # [B, H, Mq, D]
        pooled_k = selection.pool_blocks(k_c, params.chunk_size_k)
        indices, counts = _select(pooled_q, pooled_k, grid_q, grid_k, params, q.shape[-1], backend)
        key_valid = None if key_padding is None else jnp.asarray(key_padding.real_token_mask())
        out_c = _reference_attention(
            q_c, k_c, v_c, indices, counts, params.chunk_size_q, params.chunk_size_k, key_valid, fp8
        )
        return grid_q.crop(layout.from_chunk_order(out_c, padded_q, chunk_q))
    # Pallas: reorder and block means in one pass; the kernel returns raster order itself
    interpret = backend == "pallas_interpret"
    if fp8:
        config = _kernel_config(kernel_config, backend)
        fp8_call = functools.partial(_fp8_attention, grid_q=grid_q, grid_k=grid_k, params=params, config=config,
                                     interpret=interpret)
        return grid_q.crop(fp8_operands.inference_only(fp8_call, q, k, v))
    v_c = layout.to_chunk_order(v, padded_k, chunk_k)  # [B, Sk, H, D]
    q_c, pooled_q = pallas_chunking.chunk_and_pool(q, padded_q, chunk_q, interpret=interpret)
    k_c, pooled_k = pallas_chunking.chunk_and_pool(k, padded_k, chunk_k, interpret=interpret)
    config = _kernel_config(kernel_config, backend)
    indices, counts = _select(pooled_q, pooled_k, grid_q, grid_k, params, q.shape[-1], backend,
                              config.top_k_row_pieces)
    out = sparse_attention(  # the selection writes each list ascending
        q_c, k_c, v_c, indices, counts, params.chunk_size_q, params.chunk_size_k, config, (padded_q, chunk_q),
        key_padding, True,
    )
    return grid_q.crop(out)


def _checked_grids(q, k, latent_shape_q, latent_shape_k, params: BSAParams) -> tuple[tuple, tuple]:
    """The (T, H, W) grids of q and k as int triples, checked against the token counts (any chunk shape fits)."""
    latents = []
    for name, x, latent_shape in (("q", q, latent_shape_q), ("k", k, latent_shape_k)):
        padding = GridPadding.of(latent_shape, getattr(params, f"chunk_3d_shape_{name}"), what=name)
        if x.shape[1] != math.prod(padding.latent):
            raise BSAInputError(
                f"{name} has {x.shape[1]} tokens but its latent grid {padding.latent} holds "
                f"{math.prod(padding.latent)}"
            )
        latents.append(padding.latent)
    return latents[0], latents[1]


def bsa_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    latent_shape_q: Sequence[int],
    latent_shape_k: Sequence[int],
    params: BSAParams,
    *,
    backend: str = "auto",
    kernel_config: KernelConfig | None = None,
) -> jax.Array:
    """Block-sparse attention of q [B, Sq, H, D] over k, v [B, Sk, H, D], tokens in (T, H, W) raster order.

    latent_shape_q / latent_shape_k: the (T, H, W) token grids of q and k (Sq and Sk are their
    products; they differ when condition frames are attended to). Softmax scale 1/sqrt(D).
    Any grid: where the chunk shape does not divide it, the grid is padded to whole chunks and the output is
    that of the rule applied to the real tokens alone (edge blocks hold fewer tokens; see `padding`).
    backend: "auto" (Pallas kernels on a GPU, reference elsewhere), "reference", "pallas" (GPU: the forward and
        backward kernels `kernel_config` picks: Mosaic GPU on Hopper, Triton-lowered elsewhere, by default) or
        "pallas_interpret" (the same kernels through the Pallas interpreters, CPU).
    kernel_config: which forward and backward kernels and their launch settings (None: the defaults tuned on an
        H100 and H200); `KernelConfig(fp8=True)`: the FP8 forward (Hopper; emulated on the reference backend),
        inference only.
    Returns [B, Sq, H, D] in q's dtype, raster order.
    """
    if not isinstance(params, BSAParams):
        raise BSAConfigError(f"params must be a BSAParams, got {type(params).__name__}")
    _check_qkv(q, k, v)
    latent_q, latent_k = _checked_grids(q, k, latent_shape_q, latent_shape_k, params)
    backend = resolve_backend(backend)
    if backend != "reference":
        check_pallas_shapes(q.shape[-1], params.chunk_size_q, params.chunk_size_k)
    return _bsa_attention(q, k, v, latent_q, latent_k, params, backend, kernel_config)


def bsa_selection(
    q: jax.Array,
    k: jax.Array,
    latent_shape_q: Sequence[int],
    latent_shape_k: Sequence[int],
    params: BSAParams,
) -> tuple[jax.Array, jax.Array]:
    """The key blocks `bsa_attention` selects for each query block (the reference rule, any grid; a diagnostic).

    q [B, Sq, H, D], k [B, Sk, H, D] in raster order. Blocks are the chunks of the grids padded to whole chunks,
    in chunk order. Returns (indices [B, H, Mq, K_max] int32 ascending, padded with Mk; counts [B, H, Mq] int32).
    """
    if not isinstance(params, BSAParams):
        raise BSAConfigError(f"params must be a BSAParams, got {type(params).__name__}")
    _check_qkv(q, k, k)
    latent_q, latent_k = _checked_grids(q, k, latent_shape_q, latent_shape_k, params)
    grid_q = GridPadding(latent_q, params.chunk_3d_shape_q)
    grid_k = GridPadding(latent_k, params.chunk_3d_shape_k)
    pooled_q = selection.pool_blocks(layout.to_chunk_order(grid_q.pad(q), grid_q.padded, grid_q.chunk), grid_q.block_size)
    pooled_k = selection.pool_blocks(layout.to_chunk_order(grid_k.pad(k), grid_k.padded, grid_k.chunk), grid_k.block_size)
    return _select(pooled_q, pooled_k, grid_q, grid_k, params, q.shape[-1], "reference")
