"""FP8 (e4m3) operands of the Mosaic BSA forward with `KernelConfig(fp8=True)`, and their float32 emulation.

Why: Hopper's tensor cores multiply e4m3 at twice the bf16 rate (FlashAttention-3's FP8 path, SageAttention2), and
the BSA forward spends about half of each key block's step in its two products. The kernel takes:
- q, k and v in e4m3, each with one scale per 64-token block and head (as SageAttention's per-block q and k): each
  block's amax maps to e4m3's largest value, so the chunking pass that writes a block also finds its scale and no
  pass over the whole of q, k or v comes first. The kernel multiplies each block pair's logits by the two scales.
  Each key block's V scale s_j is folded into its weights (P_j * s_j / S, S the head's largest V block scale, `fold`
  here; a block of zeros folds by 1): the output accumulator then stays in S's units, so the online softmax need
  only rescale it where a row's maximum grew (`MosaicConfig.conditional_rescale`). The fold moved the error by
  0.3-0.8% of itself in emulation, with V blocks two decades apart (BENCHMARKS.md, "Folding V's block scales");
- v transposed to [B, H, D, Sk]: FP8 wgmma takes K-major operands only, and the keys are P·V's contraction, so each
  key block of V^T is a K-major [D, 64] tile. Its keys are in the order the kernel's weights reach P·V
  (`to_weights_key_order`): the weights go from the q·k^T accumulator's register layout to the 8-bit A operand's by
  reading each thread's bytes as the operand's (`mosaic_common.e4m3_weights_operand`, no shuffle and no
  shared-memory round trip), which reorders each 16 keys; V^T's keys are reordered the same way when it is written;
- the softmax weights P (in [0, 1]) rounded to e4m3 after a 2^P_EXPONENT scale, which the kernel adds to the
  exponent of its exp2 for free: the small weights then stay clear of e4m3's subnormals; the row sums carry the
  same factor, so it cancels in the output and is taken out of the log-sum-exp.

`emulated_attention_inputs` and `round_weights` give the same roundings in float32, for the reference backend (the
CPU) and for measuring the kernel's error.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.errors import BSAConfigError

E4M3 = jnp.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite e4m3 value
P_EXPONENT = 8  # the softmax weights are rounded to e4m3 as P * 2^P_EXPONENT (at most 256 < E4M3_MAX)
ZERO_BLOCK_SCALE = 2.0**-126  # an all-zero block's scale (float32's smallest normal, no division by 0)
SMALLEST_SCALE = 2.0**-125  # the least any other block's scale is: a block of zeros is told apart by its scale
NO_GRADIENT = "KernelConfig(fp8=True) is for inference: the FP8 forward has no backward; differentiate with fp8=False"


class Fp8Operands(NamedTuple):
    """The FP8 kernel's inputs: q [B, Sq, H, D], k [B, Sk, H, D] and v_t [B, H, D, Sk] in e4m3, v_t's keys in
    `to_weights_key_order` within each block (as `quantize_operands` and the chunking kernel write it); float32 scales
    per 64-token block: q_scales [B, H, Mq] and k_scales [B, H, Mk] (applied to the logits), v_scales [B, H, Mk]."""

    q: jax.Array
    k: jax.Array
    v_t: jax.Array
    q_scales: jax.Array
    k_scales: jax.Array
    v_scales: jax.Array

    def kernel_scales(self, indices: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The kernel's scale inputs for index lists [B, H, Mq, W]: each entry's logit scale (`step_scales`) and the
        base-2 logarithm of its key block's V fold (`fold`, <= 0), [B, H, Mq, W] each, and the head's V scale S
        [B, H] the output is in units of."""
        fold_exponents = _gathered(jnp.log2(fold(self.v_scales)), indices, outside=0.0)
        return step_scales(self.q_scales, self.k_scales, indices), fold_exponents, head_v_scales(self.v_scales)


def scale_of(amax: jax.Array) -> jax.Array:
    """The scale that maps a largest magnitude `amax` to E4M3_MAX, at least SMALLEST_SCALE (blocks of values below
    float32's normal range keep a normal scale); ZERO_BLOCK_SCALE where amax is 0, so that nothing divides by 0."""
    return jnp.where(amax > 0, jnp.maximum(amax / E4M3_MAX, SMALLEST_SCALE), ZERO_BLOCK_SCALE)


def head_v_scales(v_scales: jax.Array) -> jax.Array:
    """S [B, H]: each head's largest V block scale [B, H, Mk] (ZERO_BLOCK_SCALE for a head of zeros)."""
    return jnp.max(v_scales, axis=-1)


def fold(v_scales: jax.Array) -> jax.Array:
    """Each V block's factor on its softmax weights, s_j / S in (0, 1], from v_scales [B, H, Mk]; 1 for a block of zeros
    (any factor serves its V, and 1 keeps its weights' share of the row sums exact)."""
    zero = v_scales == ZERO_BLOCK_SCALE
    return jnp.where(zero, 1.0, v_scales / head_v_scales(v_scales)[..., None])


def block_scales(x: jax.Array, block: int) -> jax.Array:
    """Per block of `block` tokens and head, the scale [B, H, S // block] float32 of chunk-ordered x [B, S, H, D]."""
    b, s, h, d = x.shape
    amax = jnp.max(jnp.abs(x.astype(jnp.float32)).reshape(b, s // block, block, h, d), axis=(2, 4))  # [B, M, H]
    return scale_of(amax).transpose(0, 2, 1)


def to_weights_key_order(x: jax.Array, axis: int = -1) -> jax.Array:
    """x with each 16 entries along `axis` (a multiple of 16 long) in the FP8 kernel's P·V key order: entry
    16g + 8a + 2t + b (a, b in {0, 1}, t in [0, 4)) moves to 16g + 4t + 2a + b, where the 8-bit A operand's layout
    holds what the accumulator's layout held there (`mosaic_common.weights_operand_key_order` derives it from both)."""
    return _swap_within_16(x, axis, (2, 4))  # (g, a, t, b) -> (g, t, a, b)


def from_weights_key_order(x: jax.Array, axis: int = -1) -> jax.Array:
    """The inverse of `to_weights_key_order`."""
    return _swap_within_16(x, axis, (4, 2))  # (g, t, a, b) -> (g, a, t, b)


def _swap_within_16(x: jax.Array, axis: int, outer: tuple[int, int]) -> jax.Array:
    """x with each 16 entries along `axis` split as (outer[0], outer[1], 2) and its first two parts swapped."""
    axis = axis % x.ndim
    if x.shape[axis] % 16:
        raise ValueError(f"the FP8 kernel's key order reorders 16 keys at a time: axis {axis} of {x.shape} is not a "
                         "multiple of 16 (its blocks are 64 tokens)")
    split = (*x.shape[:axis], x.shape[axis] // 16, *outer, 2, *x.shape[axis + 1:])
    order = [*range(axis + 1), axis + 2, axis + 1, *range(axis + 3, x.ndim + 3)]
    return x.reshape(split).transpose(order).reshape(x.shape)


def per_token(scales: jax.Array, block: int) -> jax.Array:
    """Per-block scales [B, H, M] spread over their blocks' tokens, [B, M * block, H, 1] (to multiply [B, S, H, D])."""
    return jnp.repeat(scales.transpose(0, 2, 1), block, axis=1)[..., None]


def _blocks_to_e4m3(x: jax.Array, scales: jax.Array) -> jax.Array:
    """Chunk-ordered x [B, S, H, D] divided by its per-block scales [B, H, M], rounded to e4m3."""
    return (x.astype(jnp.float32) / per_token(scales, x.shape[1] // scales.shape[-1])).astype(E4M3)


def quantize_operands(q: jax.Array, k: jax.Array, v: jax.Array, block_q: int = 64, block_k: int = 64) -> Fp8Operands:
    """The FP8 kernel's operands from chunk-ordered q [B, Sq, H, D], k and v [B, Sk, H, D] (any float dtype), scaled per
    block of block_q / block_k tokens."""
    q_scales, k_scales, v_scales = block_scales(q, block_q), block_scales(k, block_k), block_scales(v, block_k)
    v_t = to_weights_key_order(jnp.transpose(_blocks_to_e4m3(v, v_scales), (0, 2, 3, 1)))  # [B, H, D, Sk]
    return Fp8Operands(_blocks_to_e4m3(q, q_scales), _blocks_to_e4m3(k, k_scales), v_t, q_scales, k_scales, v_scales)


def step_scales(q_scales: jax.Array, k_scales: jax.Array, indices: jax.Array) -> jax.Array:
    """Each list entry's logit scale [B, H, Mq, W]: its query block's scale times its key block's, from q_scales
    [B, H, Mq], k_scales [B, H, Mk] and indices [B, H, Mq, W] (entries out of range, the padding, get the query
    block's scale alone)."""
    return q_scales[..., None] * _gathered(k_scales, indices)


def _gathered(scales: jax.Array, indices: jax.Array, outside: float = 1.0) -> jax.Array:
    """Each list entry's block value [B, H, Mq, W] from per-block values [B, H, M] (entries out of range, the lists'
    padding, get `outside`)."""
    real = (indices >= 0) & (indices < scales.shape[-1])
    gathered = jnp.take_along_axis(scales[:, :, None, :], jnp.where(real, indices, 0), axis=-1)
    return jnp.where(real, gathered, outside)


def emulated_attention_inputs(
    q: jax.Array, k: jax.Array, v: jax.Array, block_q: int = 64, block_k: int = 64
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Chunk-ordered q, k, v [B, S, H, D] as the FP8 kernel sees them (rounded to e4m3 with its scales, per block of
    block_q / block_k tokens), back in float32."""
    def per_block(x, block):
        scales = block_scales(x, block)
        return _kept(_blocks_to_e4m3(x, scales)).astype(jnp.float32) * per_token(scales, block)

    return per_block(q, block_q), per_block(k, block_k), per_block(v, block_k)


def round_weights(weights: jax.Array, folds: jax.Array | float = 1.0) -> jax.Array:
    """Unnormalised softmax weights (in [0, 1], float32) rounded as the FP8 kernel rounds them before P·V, in their
    own units: each key's weights times its block's V fold (`fold`, broadcastable to weights) and 2^P_EXPONENT, rounded
    to e4m3, and divided by both again."""
    scale = float(2**P_EXPONENT) * folds
    return _kept((weights * scale).astype(E4M3)).astype(jnp.float32) / scale


def emulated_weight_rounding(v: jax.Array, block_k: int = 64):
    """The weights' rounding of the FP8 kernel on chunk-ordered v [B, Sk, H, D], for `reference.blocked_attention`:
    a function of the gathered weights [B, H, cq, W * block_k] and their key blocks [B, H, W]."""
    folds = fold(block_scales(v, block_k))  # [B, H, Mk]

    def rounded(weights, key_blocks):
        per_key = jnp.repeat(jnp.take_along_axis(folds, key_blocks, axis=-1), block_k, axis=-1)  # [B, H, W * block_k]
        return round_weights(weights, per_key[:, :, None, :])

    return rounded


def _kept(x: jax.Array) -> jax.Array:
    """x, behind an optimization barrier: XLA on a GPU otherwise folds the float32 -> e4m3 -> float32 round trip away
    (the emulation then measured bf16's error there, 3.2e-3 against 4.9e-2 on the CPU; H200, jax 0.11.2)."""
    return jax.lax.optimization_barrier(x)


def inference_only(fn, *arrays):
    """fn(*arrays), with any differentiation refused by name, on every backend alike (the FP8 forward has no backward,
    and its emulation must not pretend to have one)."""

    @jax.custom_vjp
    def call(*arrays):
        return fn(*arrays)

    def refuse(*_):
        raise BSAConfigError(NO_GRADIENT)

    call.defvjp(refuse, refuse)
    return call(*arrays)
