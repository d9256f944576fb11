"""FP8 (e4m3) operands of the Mosaic BSA forward with `KernelConfig(fp8=True)`, and their float32 emulation.

Why: Hopper's tensor cores multiply e4m3 at twice the bf16 rate (FlashAttention-3's FP8 path, SageAttention2), and
the BSA forward spends about half of each key block's step in its two products. The kernel takes:
- q and k in e4m3, each with one scale per (batch, head): the DiT's per-head RMSNorm gives every token a similar
  size, so one amax per head keeps the tokens in e4m3's normal range;
- v in e4m3 and transposed to [B, H, D, Sk]: FP8 wgmma takes K-major operands only, and the keys are P·V's
  contraction, so each key block of V^T is a K-major [D, 64] tile;
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
NO_GRADIENT = "KernelConfig(fp8=True) is for inference: the FP8 forward has no backward; differentiate with fp8=False"


class Fp8Operands(NamedTuple):
    """The FP8 kernel's inputs: q [B, Sq, H, D], k [B, Sk, H, D] and v_t [B, H, D, Sk] in e4m3; scales [B, H, 2]
    float32 holding, per (batch, head), q's scale times k's (applied to the logits) and v's (applied to the output)."""

    q: jax.Array
    k: jax.Array
    v_t: jax.Array
    scales: jax.Array


def head_scales(x: jax.Array) -> jax.Array:
    """Per (batch, head) scale [B, H] float32 that maps x [B, S, H, D]'s largest magnitude to E4M3_MAX (1 where the
    head is all zeros, so that nothing divides by zero)."""
    amax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=(1, 3))  # [B, H]
    return jnp.where(amax > 0, amax / E4M3_MAX, 1.0)


def _to_e4m3(x: jax.Array, scale: jax.Array) -> jax.Array:
    """x [B, S, H, D] divided by its per-head scale [B, H], rounded to e4m3."""
    return (x.astype(jnp.float32) / scale[:, None, :, None]).astype(E4M3)


def quantize_operands(q: jax.Array, k: jax.Array, v: jax.Array) -> Fp8Operands:
    """The FP8 kernel's operands from chunk-ordered q [B, Sq, H, D], k and v [B, Sk, H, D] (any float dtype)."""
    q_scale, k_scale, v_scale = head_scales(q), head_scales(k), head_scales(v)  # [B, H] each
    v_t = jnp.transpose(_to_e4m3(v, v_scale), (0, 2, 3, 1))  # [B, H, D, Sk]
    scales = jnp.stack([q_scale * k_scale, v_scale], axis=-1)  # [B, H, 2]
    return Fp8Operands(_to_e4m3(q, q_scale), _to_e4m3(k, k_scale), v_t, scales)


def emulated_attention_inputs(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k, v [B, S, H, D] as the FP8 kernel sees them (rounded to e4m3 with its scales), back in float32."""
    def rounded(x):
        scale = head_scales(x)
        return _kept(_to_e4m3(x, scale)).astype(jnp.float32) * scale[:, None, :, None]

    return rounded(q), rounded(k), rounded(v)


def round_weights(weights: jax.Array) -> jax.Array:
    """Unnormalised softmax weights (in [0, 1], float32) rounded as the FP8 kernel rounds them before P·V."""
    scale = float(2**P_EXPONENT)
    return _kept((weights * scale).astype(E4M3)).astype(jnp.float32) / scale


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
