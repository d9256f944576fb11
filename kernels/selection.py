"""Block selection: which key blocks each query block attends to.

Each block of q and k (one 3D chunk of tokens, already contiguous in chunk order) is mean-pooled;
block scores are pooled_q @ pooled_k^T. Per query block the rules of the original LongCat BSA:
top-k keeps (1 - sparsity) * Mk blocks, rounded down; CDF sorts softmax(scores / sqrt(D)) descending
and keeps the blocks whose cumulative sum is at or below the threshold (searchsorted right); with both
rules the larger count wins. Unlike the original, each rule keeps at least the best block (the original's
keep none where one block holds more than the threshold, or where the top-k count rounds to 0, and such a
query block outputs 0), and a threshold of 1 keeps every block (the float32 cumulative sum can end above 1,
which dropped the last block, differently on each backend). Shapes stay static under `jit`: index lists are padded to a fixed
width with the sentinel Mk, and a count per query block says how many entries are real.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels import pallas_topk
from kernels.errors import BSAInputError
from kernels.params import BSAParams


def pool_blocks(x: jax.Array, chunk_size: int) -> jax.Array:
    """Mean of each block of `chunk_size` tokens, in float32: [B, S, H, D] -> [B, H, S // chunk_size, D]."""
    b, s, h, d = x.shape
    if s % chunk_size:
        raise BSAInputError(f"sequence length {s} is not a multiple of the block size {chunk_size}")
    pooled = x.astype(jnp.float32).reshape(b, s // chunk_size, chunk_size, h, d).mean(axis=2)
    return pooled.transpose(0, 2, 1, 3)  # [B, H, M, D]


def pooled_scores(pooled_q: jax.Array, pooled_k: jax.Array) -> jax.Array:
    """Block scores pooled_q @ pooled_k^T in float32: [B, H, Mq, D], [B, H, Mk, D] -> [B, H, Mq, Mk].

    Near float32 accuracy everywhere: float32 on the CPU, three bf16 passes on a GPU (float32 there took
    0.73 ms of a 19 ms BSA call at 84,480 tokens on an H100).
    """
    if jax.default_backend() == "gpu":
        precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32_X3
    else:
        precision = jax.lax.Precision.HIGHEST
    return jnp.einsum("bhmd,bhnd->bhmn", pooled_q, pooled_k, precision=precision, preferred_element_type=jnp.float32)


def block_scores(q_chunked: jax.Array, k_chunked: jax.Array, chunk_size_q: int, chunk_size_k: int) -> jax.Array:
    """Block scores pooled_q @ pooled_k^T of chunk-ordered q and k, in float32. [B, H, Mq, Mk]."""
    return pooled_scores(pool_blocks(q_chunked, chunk_size_q), pool_blocks(k_chunked, chunk_size_k))


def max_selected(params: BSAParams, num_k_blocks: int) -> int:
    """Static width of the padded index lists: the most blocks any query block can select (at least 1)."""
    if params.cdf_threshold is not None:
        return num_k_blocks
    return max(1, params.num_topk(num_k_blocks))


def top_k_counts(params: BSAParams, counts_shape: tuple[int, ...], num_k_blocks: int) -> jax.Array:
    """The counts [B, H, Mq] int32 of the top-k rule's lists: every query block keeps `params.num_topk` blocks."""
    return jnp.full(counts_shape, params.num_topk(num_k_blocks), jnp.int32)


def select_from_scores(
    scores: jax.Array, params: BSAParams, head_dim: int, *, backend: str = "reference", top_k_row_pieces: bool | None = None
) -> tuple[jax.Array, jax.Array]:
    """Selected key blocks per query block from block scores [B, H, Mq, Mk].

    backend "pallas" / "pallas_interpret" take the top-k rule through the Pallas kernel of
    `pallas_topk` (same result, much faster on a GPU than XLA's sort; `top_k_row_pieces`: its rows held as
    power-of-two pieces or not, None by their length, `KernelConfig.top_k_row_pieces`); others use `jax.lax.top_k`.

    Returns (indices [B, H, Mq, K_max] int32, ascending, padded with Mk; counts [B, H, Mq] int32).
    """
    scores = jax.lax.stop_gradient(scores)  # the selection is integer-valued: no gradient flows through it
    num_k_blocks = scores.shape[-1]
    width = max_selected(params, num_k_blocks)
    num_topk = params.num_topk(num_k_blocks)
    counts_shape = scores.shape[:-1]
    if params.cdf_threshold is None:
        if backend in ("pallas", "pallas_interpret"):
            indices = pallas_topk.top_k_indices(scores, width, interpret=backend == "pallas_interpret",
                                                split_rows=top_k_row_pieces)
        else:
            indices = jnp.sort(jax.lax.top_k(scores, width)[1].astype(jnp.int32), axis=-1)
        return indices, top_k_counts(params, counts_shape, num_k_blocks)
    weights = jax.nn.softmax(scores * (head_dim**-0.5), axis=-1)
    order = jnp.argsort(-weights, axis=-1, stable=True).astype(jnp.int32)  # [B, H, Mq, Mk], best first
    cdf = jnp.cumsum(jnp.take_along_axis(weights, order, axis=-1), axis=-1)
    if params.cdf_threshold >= 1.0:
        counts = jnp.full(counts_shape, num_k_blocks, jnp.int32)
    else:
        counts = jnp.maximum(jnp.sum(cdf <= params.cdf_threshold, axis=-1, dtype=jnp.int32), max(num_topk, 1))
    valid = jnp.arange(width, dtype=jnp.int32) < counts[..., None]
    indices = jnp.sort(jnp.where(valid, order, num_k_blocks), axis=-1)
    return indices, counts


def select_blocks(
    q_chunked: jax.Array, k_chunked: jax.Array, params: BSAParams, *, backend: str = "reference"
) -> tuple[jax.Array, jax.Array]:
    """Key blocks for each query block of chunk-ordered q [B, Sq, H, D] and k [B, Sk, H, D].

    backend: "reference" (XLA only) or "pallas" / "pallas_interpret" (top-k by a Pallas kernel).

    Returns (indices [B, H, Mq, K_max] int32 ascending, padded with Mk; counts [B, H, Mq] int32).
    """
    scores = block_scores(q_chunked, k_chunked, params.chunk_size_q, params.chunk_size_k)
    return select_from_scores(scores, params, q_chunked.shape[-1], backend=backend)


def block_mask_from_indices(indices: jax.Array, counts: jax.Array, num_k_blocks: int) -> jax.Array:
    """Dense selection mask [B, H, Mq, Mk] bool from padded index lists and counts (a scatter)."""
    b, h, m, width = indices.shape
    valid = jnp.arange(width, dtype=jnp.int32) < counts[..., None]
    columns = jnp.where(valid, indices, num_k_blocks)  # invalid entries land in a dropped column
    rows = (
        jnp.arange(b)[:, None, None, None],
        jnp.arange(h)[None, :, None, None],
        jnp.arange(m)[None, None, :, None],
    )
    mask = jnp.zeros((b, h, m, num_k_blocks + 1), bool).at[(*rows, columns)].set(True)
    return mask[..., :num_k_blocks]


def indices_from_block_mask(block_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Padded index lists (ascending, sentinel Mk) and counts from a dense mask [B, H, Mq, Mk]."""
    num_k_blocks = block_mask.shape[-1]
    mask = block_mask.astype(bool)
    positions = jnp.arange(num_k_blocks, dtype=jnp.int32)
    indices = jnp.sort(jnp.where(mask, positions, num_k_blocks), axis=-1)
    counts = jnp.sum(mask, axis=-1, dtype=jnp.int32)
    return indices, counts


def transpose_selection(
    indices: jax.Array, counts: jax.Array, num_k_blocks: int, rank_dtype=None
) -> tuple[jax.Array, jax.Array]:
    """Key block -> the query blocks that selected it, for the dk/dv pass.

    Returns (indices [B, H, Mk, Mq] int32 ascending, padded with Mq; counts [B, H, Mk] int32).
    Without a sort: each selected pair's place in its key block's list is the number of earlier query blocks that
    selected that key block (a running sum of the mask down the query blocks), and the pairs are scattered there.
    rank_dtype: the running sum's integer type; None: int16 where it holds Mq (the sum is the largest array here,
    [B, H, Mq, Mk]: half the bytes of int32), else int32. One too narrow for Mq is refused (it would wrap).
    """
    b, h, m, width = indices.shape
    if rank_dtype is None:
        rank_dtype = jnp.int16 if m < 2**15 else jnp.int32
    try:
        dtype = jnp.dtype(rank_dtype)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.signedinteger) or jnp.iinfo(dtype).max < m:
        name = rank_dtype if dtype is None else dtype.name
        raise BSAInputError(f"transpose_selection's rank_dtype {name} cannot count {m} query blocks (it needs a signed "
                            "integer type that holds the query block count); use int32 or None")
    mask = block_mask_from_indices(indices, counts, num_k_blocks)  # [B, H, Mq, Mk]
    rank = jnp.cumsum(mask, axis=2, dtype=dtype)  # [B, H, Mq, Mk]: query blocks up to this one keeping the key block
    valid = jnp.arange(width, dtype=jnp.int32) < counts[..., None]  # [B, H, Mq, W]
    key_blocks = jnp.where(valid, indices, 0)
    places = jnp.take_along_axis(rank, key_blocks, axis=-1).astype(jnp.int32) - 1  # [B, H, Mq, W]
    rows = (
        jnp.arange(b)[:, None, None, None],
        jnp.arange(h)[None, :, None, None],
        jnp.where(valid, key_blocks, num_k_blocks),  # past counts: out of range, dropped
        jnp.where(valid, places, jnp.arange(m * width, dtype=jnp.int32).reshape(m, width)),  # and distinct there too
    )
    query_blocks = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[:, None], indices.shape)
    k_indices = jnp.full((b, h, num_k_blocks, m), m, jnp.int32).at[rows].set(query_blocks, mode="drop",
                                                                             unique_indices=True)
    return k_indices, rank[:, :, -1].astype(jnp.int32)
