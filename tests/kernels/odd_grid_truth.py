"""The ground truth of BSA on token grids that the chunks do not divide: the rule applied to the real tokens alone.

Shares no code with the padding in `kernels`: no padded grid, no chunk order. Each real token's block comes from
its (t, h, w) coordinates (blocks at the far edges hold fewer tokens), block means are segment means over the
real tokens, the blocks are chosen by `select_from_scores` (the top-k / CDF rule itself), and the attention is
float32 softmax over the full raster-ordered Sq x Sk logits masked to the selected blocks.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from kernels import BSAParams, block_mask_from_indices
from kernels.selection import pooled_scores, select_from_scores


def block_of_each_token(latent, chunk) -> tuple[np.ndarray, int]:
    """([T*H*W] block index of each raster-ordered token, number of blocks); blocks in (Nt, Nh, Nw) raster order."""
    t, h, w = np.meshgrid(*(np.arange(n) for n in latent), indexing="ij")
    nt, nh, nw = (-(-n // c) for n, c in zip(latent, chunk))
    blocks = (t // chunk[0]) * nh * nw + (h // chunk[1]) * nw + w // chunk[2]
    return blocks.reshape(-1), nt * nh * nw


def real_token_means(x, latent, chunk):
    """Mean of each block's real tokens, float32: [B, S, H, D] raster order -> [B, H, M, D]."""
    blocks, num_blocks = block_of_each_token(latent, chunk)
    sums = jax.ops.segment_sum(jnp.moveaxis(x.astype(jnp.float32), 1, 0), blocks, num_blocks)  # [M, B, H, D]
    sizes = np.bincount(blocks, minlength=num_blocks).astype(np.float32)
    return jnp.moveaxis(sums / sizes[:, None, None, None], 0, 2)


def real_token_selection(q, k, latent_q, latent_k, params: BSAParams):
    """The selected blocks: a mask [B, H, Mq, Mk] bool from the real tokens' block means."""
    scores = pooled_scores(
        real_token_means(q, latent_q, params.chunk_3d_shape_q), real_token_means(k, latent_k, params.chunk_3d_shape_k)
    )
    indices, counts = select_from_scores(scores, params, q.shape[-1])
    return block_mask_from_indices(indices, counts, scores.shape[-1])


def real_token_attention(q, k, v, latent_q, latent_k, params: BSAParams):
    """BSA of raster-ordered q [B, Sq, H, D] over k, v [B, Sk, H, D] on the real tokens alone. [B, Sq, H, D] float32.

    A query whose block selected nothing outputs 0.
    """
    mask = real_token_selection(q, k, latent_q, latent_k, params)  # [B, H, Mq, Mk]
    blocks_q, _ = block_of_each_token(latent_q, params.chunk_3d_shape_q)
    blocks_k, _ = block_of_each_token(latent_k, params.chunk_3d_shape_k)
    allowed = mask[:, :, blocks_q][:, :, :, blocks_k]  # [B, H, Sq, Sk]
    qf, kf, vf = (x.astype(jnp.float32).transpose(0, 2, 1, 3) for x in (q, k, v))  # [B, H, S, D]
    logits = jnp.einsum("bhqd,bhkd->bhqk", qf, kf, precision="highest") / math.sqrt(q.shape[-1])
    # a finite stand-in for -inf keeps rows with nothing allowed (and their gradients) free of NaN; they output 0
    weights = jnp.where(allowed, jax.nn.softmax(jnp.where(allowed, logits, -1e30), axis=-1), 0.0)
    return jnp.einsum("bhqk,bhkd->bhqd", weights, vf, precision="highest").transpose(0, 2, 1, 3)
