"""A DiT Linear with quantized weights (FP8 e4m3 or INT8, per-output-channel scales), and the switch to it.

`QuantizedLinear` has the interface of `layers.Linear` that the rest of the DiT and the LoRA code use
(`in_features`, `out_features`, `dtype`, `bias`, `loras`, `lora_dtype`, `add_to_kernel`, call on x [..., in]
-> [..., out]); only its weights differ: `qkernel` [out, in] and `qscale` [out] instead of `kernel` [in, out].
Its matmul is the scheme's (`longcat_jax.quantization.matmul`): an FP8 GEMM with the activations quantized per
token on the fly, or weight-only with the weight converted inside the matmul. Bias and run-time LoRA updates
are added in float32 before the one rounding to the activation dtype, as in `Linear`.

Gradients (LoRA training on a quantized base): the weights are frozen and get none; the input's gradient is
straight-through, dx = dy @ dequantized(W).T, one GEMM in the activation dtype with the weight converted inside
it (`_quantized_matmul`). Differentiating the FP8 GEMM itself would round the gradient to e4m3 (3 mantissa bits,
nothing below 2^-9: small gradients become zeros), so its activation quantization is treated as the identity.

`quantize_linears(model, mode)` swaps the Linears that `longcat_jax.quantization.policy` selects for quantized
ones, computing their weights from the float kernels. Inside `nnx.eval_shape` (how loaders build a skeleton)
nothing is computed or allocated, so

    make = lambda: quantize_linears(LongCatDiT(config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16), "fp8")
    model = fill_model(make, quantize_tensors(tensors, "fp8", source=...), source=...)

loads a quantized DiT without the device ever holding its bf16 weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from longcat_jax.checkpoint.param_tree import ParamPath
from longcat_jax.models.dit.layers import Linear
from longcat_jax.quantization.formats import dequantize_kernel, quantize_kernel
from longcat_jax.quantization.matmul import quantized_dot
from longcat_jax.quantization.modes import QuantScheme, scheme_for
from longcat_jax.quantization.policy import is_quantized_module


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _quantized_matmul(x: jax.Array, qkernel: jax.Array, qscale: jax.Array, scheme: QuantScheme, dtype) -> jax.Array:
    """`quantized_dot` of x [..., K] in `dtype` -> float32 [..., N], with the straight-through gradient of the module
    docstring (dtype: x's, static, so the backward returns the input gradient in it)."""
    return quantized_dot(x, qkernel, qscale, scheme)


def _quantized_matmul_fwd(x, qkernel, qscale, scheme, dtype):
    return quantized_dot(x, qkernel, qscale, scheme), (qkernel, qscale)


def _quantized_matmul_bwd(scheme, dtype, residuals, grad):
    qkernel, qscale = residuals
    scaled = (grad * qscale.astype(jnp.float32)).astype(dtype)  # [..., N]
    dx = lax.dot_general(scaled, qkernel.astype(dtype), (((grad.ndim - 1,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)  # [..., K]
    return dx.astype(dtype), None, None


_quantized_matmul.defvjp(_quantized_matmul_fwd, _quantized_matmul_bwd)


class QuantizedLinear(nnx.Module):
    """y = x @ (qkernel * qscale[:, None]).T + bias, qkernel [out, in] in the scheme's format, qscale [out] float32.

    dtype: activation dtype (the output's); param_dtype: dtype of the bias and of run-time LoRA factors.
    """

    def __init__(self, in_features: int, out_features: int, *, scheme: QuantScheme, use_bias: bool = True,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.scheme = scheme
        self.qkernel = nnx.Param(jnp.zeros((out_features, in_features), scheme.weight.dtype))
        self.qscale = nnx.Param(jnp.ones((out_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        self.loras = nnx.List([])

    @classmethod
    def from_linear(cls, linear: Linear, scheme: QuantScheme) -> QuantizedLinear:
        """The quantized counterpart of `linear` (kernel quantized per output channel; bias and LoRAs kept)."""
        kernel = linear.kernel.get_value()
        quantized = cls(linear.in_features, linear.out_features, scheme=scheme, use_bias=linear.bias is not None,
                        dtype=linear.dtype, param_dtype=kernel.dtype)
        qkernel, qscale = quantize_kernel(kernel, scheme.weight)
        quantized.qkernel.set_value(qkernel)
        quantized.qscale.set_value(qscale)
        if linear.bias is not None:
            quantized.bias.set_value(linear.bias.get_value())
        quantized.loras = linear.loras
        return quantized

    @property
    def lora_dtype(self):
        """The dtype run-time LoRA factors on this Linear are stored in: the bias dtype, not the quantized one."""
        return self.param_dtype

    def dequantized_kernel(self, dtype=jnp.float32) -> jax.Array:
        """The kernel [in, out] this layer multiplies by, in `dtype` (for inspection; the call never forms it)."""
        return dequantize_kernel(self.qkernel.get_value(), self.qscale.get_value(), dtype)

    def add_to_kernel(self, delta: jax.Array) -> None:
        """Merges delta [in, out] (a LoRA update) into the weights: dequantized, added in float32, re-quantized.

        The merged weight is quantized once more, so its error is the new weight's quantization error plus
        the existing one; merging into the bf16 weights before quantizing avoids the second rounding.
        """
        merged = self.dequantized_kernel() + delta.astype(jnp.float32)
        qkernel, qscale = quantize_kernel(merged, self.scheme.weight)
        self.qkernel.set_value(qkernel)
        self.qscale.set_value(qscale)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = _quantized_matmul(x, self.qkernel.get_value(), self.qscale.get_value(), self.scheme,
                              jnp.dtype(self.dtype))  # float32
        if self.bias is not None:
            y = y + self.bias.get_value().astype(jnp.float32)
        for adapter in self.loras:
            y = y + adapter(x)
        return y.astype(self.dtype)


def _module_at(model: nnx.Module, path: ParamPath):
    target = model
    for part in path:
        target = target[part] if isinstance(part, int) else getattr(target, part)
    return target


def quantize_linears(model: nnx.Module, mode: str | QuantScheme | None,
                     select: Callable[[ParamPath], bool] = is_quantized_module) -> nnx.Module:
    """Replaces, in place, every `Linear` of `model` whose module path `select` accepts by a `QuantizedLinear`
    of `mode` ('none' or None: no change); returns `model`.

    The default selection is the policy's (the large Linears of every block); the quality measurements pass
    others to measure what quantizing one more layer group would cost.
    """
    scheme = scheme_for(mode)
    if scheme is None:
        return model
    targets = [(tuple(path), module) for path, module in nnx.iter_modules(model)
               if isinstance(module, Linear) and select(tuple(path))]
    for path, linear in targets:
        parent = _module_at(model, path[:-1])
        quantized = QuantizedLinear.from_linear(linear, scheme)
        if isinstance(path[-1], int):
            parent[path[-1]] = quantized
        else:
            setattr(parent, path[-1], quantized)
    return model
