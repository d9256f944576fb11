"""Basic layers of the LongCat DiT: Linear (with optional run-time LoRA), float32 norms, modulation.

Numerics follow the original: norms are computed in float32 and cast back to the activation dtype;
adaLN modulation (`x * (1 + scale) + shift`) happens in float32; a Linear accumulates in float32 and
rounds once after adding the bias (as a cuBLAS bf16 GEMM with a bias epilogue does) and any LoRA
updates.

Run-time LoRAs join the Linear's GEMM: `x @ kernel + sum_i (x @ down_i) @ (scale_i * up_i)` is one GEMM of
`[x, x @ down_1, ...]` [..., in + ranks] by `[kernel; scale_1 * up_1; ...]` [in + ranks, out]. Written as a second
GEMM added in float32, XLA kept both float32 results ([168,960, 12,288] float32 is 7.75 GiB each for qkv at 720p):
the 720p refinement with its LoRA then ran out of memory under a 24 GiB budget on an H200. Joined, the bias and
the rounding stay in the GEMM's epilogue as without a LoRA, at the cost of one copy of x.

Gradients (training): a Linear's matmul (`matmul_f32_out`) takes its output's gradient back to the activation
dtype before the two backward GEMMs, so they run in bf16 like the forward one. Left to JAX, the float32 output
makes both float32 GEMMs (TF32 at best on GPUs, half the bf16 rate); the rounding loses nothing, since that
gradient comes through the output's cast to the activation dtype and so is a bf16 value already.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

NORM_EPS = 1e-6


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def matmul_f32_out(x: jax.Array, kernel: jax.Array, lows: tuple[jax.Array, ...], ups: tuple[jax.Array, ...],
                   dtype) -> jax.Array:
    """x [..., in] @ kernel [in, out] + sum_i lows[i] [..., r_i] @ ups[i] [r_i, out], as one GEMM over the joined
    contraction axis (see the module docstring), operands in `dtype`, accumulated and returned in float32
    [..., out]; its backward GEMMs run in `dtype`, one per operand, so an unused gradient (a frozen kernel's) is
    dropped by XLA rather than computed as part of a joined one."""
    if not lows:
        return jnp.dot(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
    joined_x = jnp.concatenate([x.astype(dtype), *(low.astype(dtype) for low in lows)], axis=-1)
    joined_kernel = jnp.concatenate([kernel.astype(dtype), *(up.astype(dtype) for up in ups)], axis=0)
    return jnp.dot(joined_x, joined_kernel, preferred_element_type=jnp.float32)


def _matmul_f32_out_fwd(x, kernel, lows, ups, dtype):
    return matmul_f32_out(x, kernel, lows, ups, dtype), (x, kernel, lows, ups)


def _input_grad(grad, weight, like):
    """grad [..., out] @ weight[in, out].T in the GEMM dtype, float32 accumulation, returned as `like`'s dtype."""
    return jnp.dot(grad, weight.astype(grad.dtype).T, preferred_element_type=jnp.float32).astype(like.dtype)


def _weight_grad(operand, grad, like):
    """operand [..., in]^T @ grad [..., out] summed over the leading axes, returned as `like`'s dtype."""
    axes = tuple(range(operand.ndim - 1))
    return jnp.tensordot(operand.astype(grad.dtype), grad, axes=(axes, axes),
                         preferred_element_type=jnp.float32).astype(like.dtype)


def _matmul_f32_out_bwd(dtype, residuals, grad):
    x, kernel, lows, ups = residuals
    grad = grad.astype(dtype)  # [..., out]
    dx = _input_grad(grad, kernel, x)  # [..., in]
    dkernel = _weight_grad(x, grad, kernel)  # [in, out]
    dlows = tuple(_input_grad(grad, up, low) for low, up in zip(lows, ups, strict=True))  # [..., r_i]
    dups = tuple(_weight_grad(low, grad, up) for low, up in zip(lows, ups, strict=True))  # [r_i, out]
    return dx, dkernel, dlows, dups


matmul_f32_out.defvjp(_matmul_f32_out_fwd, _matmul_f32_out_bwd)


def matmul_with_loras(x: jax.Array, kernel: jax.Array, loras, dtype) -> jax.Array:
    """x [..., in] @ kernel [in, out] plus every `LoRAAdapter` of `loras`, one GEMM (`matmul_f32_out`) with operands
    in `dtype` -> float32 [..., out]."""
    lows = tuple(adapter.low(x) for adapter in loras)  # [..., rank_i]
    ups = tuple(adapter.scaled_up() for adapter in loras)  # [rank_i, out]
    return matmul_f32_out(x, kernel, lows, ups, jnp.dtype(dtype))


class LoRAScale(nnx.Variable):
    """The multiplier * alpha_scale of one run-time LoRA: a variable, so changing it does not retrace."""


class LoRAWeight(nnx.Variable):
    """A run-time LoRA factor; not an `nnx.Param`, so it never mixes with the model's own weights."""


class LoRAAdapter(nnx.Module):
    """One low-rank update `scale * up(down(x))` attached to a Linear at run time.

    down_kernel: [in, rank], up_kernel: [rank, out] (the Linear kernel layout), stored in the model's
    parameter dtype. Both matmuls run in the Linear's dtype with float32 accumulation, and the update
    is returned in float32 so the Linear rounds its output once.
    """

    def __init__(self, down_kernel, up_kernel, scale: float, *, dtype, param_dtype):
        self.dtype = dtype
        self.down_kernel = LoRAWeight(jnp.asarray(down_kernel, param_dtype))
        self.up_kernel = LoRAWeight(jnp.asarray(up_kernel, param_dtype))
        self.scale = LoRAScale(jnp.asarray(scale, jnp.float32))

    def low(self, x: jax.Array) -> jax.Array:
        """x: [..., in] in the Linear's dtype -> down(x) [..., rank] in that dtype (float32 accumulation)."""
        low = jnp.dot(x, self.down_kernel.get_value().astype(self.dtype), preferred_element_type=jnp.float32)
        return low.astype(self.dtype)

    def scaled_up(self) -> jax.Array:
        """scale * up [rank, out], formed in float32 and returned in the Linear's dtype."""
        return (self.up_kernel.get_value().astype(jnp.float32) * self.scale.get_value()).astype(self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., in] in the Linear's dtype -> float32 update [..., out] (a Linear joins it to its own GEMM
        instead; see the module docstring)."""
        return jnp.dot(self.low(x), self.scaled_up(), preferred_element_type=jnp.float32)


class InputMoment(nnx.Variable):
    """A calibration sum kept on a Linear while it records its inputs (`Linear.record_inputs`): x^T x [in, in] float32
    or the number of rows summed."""


class Linear(nnx.Module):
    """y = x @ kernel + bias, kernel [in, out]; `loras` holds the run-time LoRA adapters (none by default).

    `record_inputs()` makes every call add its inputs' x^T x (float32, exact products) and row count to
    `input_moment` / `input_rows` (GPTQ calibration, `longcat_jax.models.dit.calibration`); under `nnx.jit` the sums
    come back with the module. Not inside a loop that the block traces (token chunking): the calibration runs
    the blocks unchunked."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        self.loras = nnx.List([])
        self.input_moment: InputMoment | None = nnx.data(None)
        self.input_rows: InputMoment | None = nnx.data(None)

    def record_inputs(self, on: bool = True) -> None:
        """Starts (from zero) or stops summing this Linear's inputs' second moment (see the class docstring)."""
        self.input_moment = InputMoment(jnp.zeros((self.in_features,) * 2, jnp.float32)) if on else None
        self.input_rows = InputMoment(jnp.zeros((), jnp.int32)) if on else None

    def input_second_moment(self) -> jax.Array:
        """The recorded x^T x / rows [in, in] float32 (after `record_inputs()` and at least one call)."""
        return self.input_moment.get_value() / self.input_rows.get_value()

    @property
    def lora_dtype(self):
        """The dtype run-time LoRA factors on this Linear are stored in: the kernel's."""
        return self.kernel.get_value().dtype

    def add_to_kernel(self, delta: jax.Array) -> None:
        """kernel += delta [in, out] (a merged LoRA update), summed in float32 and rounded once."""
        kernel = self.kernel.get_value()
        self.kernel.set_value((kernel.astype(jnp.float32) + delta.astype(jnp.float32)).astype(kernel.dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        if self.input_moment is not None:
            rows = x.reshape(-1, self.in_features).astype(jnp.float32)  # [N, in]
            moment = jnp.dot(rows.T, rows, precision=jax.lax.Precision.HIGHEST)
            self.input_moment.set_value(self.input_moment.get_value() + moment)
            self.input_rows.set_value(self.input_rows.get_value() + rows.shape[0])
        y = matmul_with_loras(x, self.kernel.get_value(), self.loras, self.dtype)  # float32
        if self.bias is not None:
            y = y + self.bias.get_value().astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """Per-head RMSNorm on the last axis: normalized in float32, cast back, then scaled by the weight."""

    def __init__(self, dim: int, *, eps: float = NORM_EPS, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        del rngs
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * self.scale.get_value().astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis computed in float32 (affine optional), result in the input dtype."""

    def __init__(self, dim: int, *, affine: bool, eps: float = NORM_EPS, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        del rngs
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype)) if affine else None
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype)) if affine else None

    def standardize_f32(self, x: jax.Array) -> jax.Array:
        """The normalized input before the affine transform, in float32."""
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        return (xf - mean) * jax.lax.rsqrt(var + self.eps)

    def normalize_f32(self, x: jax.Array) -> jax.Array:
        """The normalized (and affine-transformed) input, in float32."""
        out = self.standardize_f32(x)
        if self.scale is not None:
            out = out * self.scale.get_value().astype(jnp.float32) + self.bias.get_value().astype(jnp.float32)
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.normalize_f32(x).astype(x.dtype)


def modulate_f32(norm: LayerNorm, x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: norm(x) * (1 + scale) + shift in float32. x: [B, T, S, C] (tokens grouped per latent frame); shift,
    scale: [B, T, 1, C] float32."""
    return norm.normalize_f32(x) * (1.0 + scale) + shift


def modulate(norm: LayerNorm, x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """`modulate_f32` returned in x's dtype."""
    return modulate_f32(norm, x, shift, scale).astype(x.dtype)


def gated_residual(x: jax.Array, gate: jax.Array, update: jax.Array) -> jax.Array:
    """x + gate * update in float32, rounded to x's dtype. x, update: [B, T, S, C]; gate: [B, T, 1, C] f32."""
    return (x.astype(jnp.float32) + gate * update.astype(jnp.float32)).astype(x.dtype)
