"""A DiT Linear with quantized weights (FP8 e4m3 or INT8, per-output-channel scales), and the switch to it.

`QuantizedLinear` has the interface of `layers.Linear` that the rest of the DiT and the LoRA code use
(`in_features`, `out_features`, `dtype`, `bias`, `loras`, `lora_dtype`, `add_to_kernel`, call on x [..., in]
-> [..., out]); only its weights differ: `qkernel` [out, in] and `qscale` [out] instead of `kernel` [in, out].
Its matmul is the scheme's (`longcat_jax.quantization.matmul`): an FP8 GEMM with the activations quantized per
token on the fly, or weight-only with the weight converted inside the matmul. Bias and run-time LoRA updates
are added in float32 before the one rounding to the activation dtype, as in `Linear`.

Run-time LoRAs and many tokens: a quantized Linear with LoRAs multiplies at most `LORA_CHUNK_ROWS` rows at a time:
matmul, bias, LoRA updates and rounding run per chunk in a loop that writes each chunk's rows of the output in
place, and only one chunk's float32 arrays are alive. Every step works on each row alone (per-token activation
scales; a per-tensor scale is computed over all rows first), so the output is the one of all rows at once. The
chunks interleave, chunk i holding tokens i, i + n, i + 2n, ... of n (of every batch entry): with the tokens split
over devices (context parallel), each device's contiguous tokens hold its share of every chunk, and taking a chunk
moves nothing between devices (contiguous chunks would make XLA gather all tokens on every device). Why: over all
168,960 tokens of the 720p refinement the float32 arrays of the qkv Linear ([168,960, 12,288], 7.75 GiB each) were
alive at once, more than a 24 GiB budget leaves beside the rest of the step (the same arrays ran the bf16
refinement out of memory at 24 GiB on an H200).

Weight-only (INT8, or e4m3 where the GPU has no FP8 GEMM), each chunk is one GEMM: the weight dequantized to the
activation dtype inside it (its per-channel scale applied before the one rounding to bf16), joined to the LoRAs as
the bf16 `Linear` joins them (`layers.matmul_with_loras`): one float32 [rows, out] result, and gradients as the bf16
Linear's. FP8 compute cannot take the LoRAs into its GEMM: its float32 result (the per-token and per-channel scales
follow the GEMM) and the LoRA updates' are two arrays.

Differentiated (LoRA training), the loop keeps every chunk's intermediates for the backward. Compiled for an H100
without a GPU (XLA's buffer assignment, 2026-12-03), one real-size block's training step at 84,480 tokens held 14.8
GiB of temporaries with bf16 weights; INT8 with the scale on a float32 output and the LoRAs as a second float32
array: 23.7 GiB in chunks, 32.1 GiB all rows at once (the 48-block INT8 step ran out of memory on an H200); INT8
joined, all rows at once: 15.1 GiB, and 24.2 GiB in chunks; FP8: 23.7 GiB in chunks, 31.5 GiB all rows at once. So
LoRA training on a weight-only base multiplies all rows at once (`prepare_for_lora_training`, which
`training.trainable_lora` calls); on an FP8 base it keeps the chunks. The bf16 rounding of the scaled weight costs little
beside the INT8 rounding: on one 4096 x 4096 GEMM (random N(0, 1/4096) weights, 512 tokens) the relative error
against the bf16 weights was 8.94e-3 against 8.69e-3 with the scale on the output (2026-12-03, CPU).

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
from longcat_jax.models.dit.layers import Linear, matmul_with_loras
from longcat_jax.quantization.formats import dequantize_kernel, quantize_kernel
from longcat_jax.quantization.matmul import activation_scale, prequantized_dot, quantized_dot, straight_through_input_grad
from longcat_jax.quantization.modes import FP8_COMPUTE, PER_TENSOR, PER_TOKEN, QuantScheme, scheme_for
from longcat_jax.quantization.policy import is_quantized_module

# Rows (tokens) a quantized Linear with run-time LoRAs multiplies at once (see the module docstring): the DiT's
# largest token chunk (`longcat_jax.memory.plan.CHUNK_CHOICES`), so a chunked block's Linears run whole; for the
# qkv Linear its two float32 arrays are then at most 3 GiB. `longcat_jax.memory.footprint` counts with it.
LORA_CHUNK_ROWS = 32768


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _quantized_matmul(x: jax.Array, qkernel: jax.Array, qscale: jax.Array, x_scale: jax.Array | None,
                      prequantized: tuple[jax.Array, jax.Array] | None, scheme: QuantScheme, dtype) -> jax.Array:
    """`quantized_dot` of x [..., K] in `dtype` -> float32 [..., N], with the straight-through gradient of the module
    docstring (dtype: x's, static, so the backward returns the input gradient in it). x_scale: the FP8 activation
    scale computed before (None: x's own); it gets no gradient, as the quantization is taken as the identity.
    prequantized (FP8 compute): x's per-token e4m3 form (xq [..., K], scale [..., 1]) made by the caller, multiplied
    instead of x, which then only carries the gradient."""
    return _quantized_matmul_fwd(x, qkernel, qscale, x_scale, prequantized, scheme, dtype)[0]


def _quantized_matmul_fwd(x, qkernel, qscale, x_scale, prequantized, scheme, dtype):
    if prequantized is not None:
        y = prequantized_dot(*prequantized, qkernel, qscale, gemm_dtype=jnp.dtype(scheme.gemm_dtype))
    else:
        y = quantized_dot(x, qkernel, qscale, scheme, x_scale=x_scale)
    return y, (qkernel, qscale, x_scale)


def _quantized_matmul_bwd(scheme, dtype, residuals, grad):
    qkernel, qscale, x_scale = residuals
    dx = straight_through_input_grad(grad, qkernel, qscale, dtype)  # [..., K]
    return dx.astype(dtype), None, None, None if x_scale is None else jnp.zeros_like(x_scale), None


_quantized_matmul.defvjp(_quantized_matmul_fwd, _quantized_matmul_bwd)


def token_chunks(batch: int, tokens: int, max_rows: int) -> tuple[int, int]:
    """(chunks, tokens per chunk) for `batch` x `tokens` rows taken at most `max_rows` at a time (each chunk takes
    its tokens of every batch entry): the fewest chunks, or, where that count does not divide `tokens`, the first
    count up to twice it that does; failing that the fewest (the chunks then cover a few tokens twice, see
    `over_token_chunks`). A chunk holds at least one token of each batch entry."""
    fewest = min(tokens, -(-batch * tokens // max_rows))
    chunks = next((n for n in range(fewest, min(2 * fewest, tokens) + 1) if tokens % n == 0), fewest)
    return chunks, -(-tokens // chunks)


def over_token_chunks(rows_fn, x: jax.Array, out_features: int, max_rows: int) -> jax.Array:
    """rows_fn (x [B, t, K] -> [B, t, out_features] in x's dtype, each row on its own) over x [B, T, K], at most
    `max_rows` rows (B x t) at a time, each chunk's result written into the [B, T, out_features] output in place;
    the same as rows_fn(x).

    Where the chunk count divides T the chunks interleave (see the module docstring). Otherwise (T with no divisor
    near B * T / max_rows, which DiT token counts, products of frames, rows and columns, seldom are) they are
    contiguous, the last one ending at token T and so overlapping the one before by fewer tokens than there are
    chunks: those are computed twice and written with the same values. Contiguous chunks of tokens split over
    devices make XLA gather them.
    """
    b, t, k = x.shape
    chunks, per_chunk = token_chunks(b, t, max_rows)
    if chunks == 1:
        return rows_fn(x)
    if chunks * per_chunk == t:
        x = x.reshape(b, per_chunk, chunks, k)  # [B, t, n, K]: token j * n + i is token j of chunk i

        def interleaved(index, out):
            y = rows_fn(lax.dynamic_index_in_dim(x, index, axis=2, keepdims=False))  # [B, t, out_features]
            return lax.dynamic_update_index_in_dim(out, y, index, axis=2)

        out = lax.fori_loop(0, chunks, interleaved, jnp.zeros((b, per_chunk, chunks, out_features), x.dtype))
        return out.reshape(b, t, out_features)

    def contiguous(index, out):
        start = jnp.minimum(index * per_chunk, t - per_chunk)
        y = rows_fn(lax.dynamic_slice_in_dim(x, start, per_chunk, axis=1))  # [B, t, out_features]
        return lax.dynamic_update_slice_in_dim(out, y, start, axis=1)

    return lax.fori_loop(0, chunks, contiguous, jnp.zeros((b, t, out_features), x.dtype))


class QuantizedLinear(nnx.Module):
    """y = x @ (qkernel * qscale[:, None]).T + bias, qkernel [out, in] in the scheme's format, qscale [out] float32.

    dtype: activation dtype (the output's); param_dtype: dtype of the bias and of run-time LoRA factors;
    `lora_chunk_rows`: with LoRAs, the rows (tokens x batch) multiplied at once, None: all (see the module docstring
    and `prepare_for_lora_training`).
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
        self.lora_chunk_rows: int | None = LORA_CHUNK_ROWS

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
        """The kernel [in, out] this layer multiplies by, in `dtype` (a weight-only call with LoRAs forms it once for its
        joined GEMM; otherwise for inspection)."""
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

    def prepare_for_lora_training(self) -> None:
        """Weight-only: multiply all rows at once from now on, as the chunks' backward keeps every chunk's arrays
        (see the module docstring); FP8 compute keeps its chunks, which there hold less."""
        if self.scheme.compute != FP8_COMPUTE:
            self.lora_chunk_rows = None

    @property
    def takes_prequantized(self) -> bool:
        """An FP8 GEMM with per-token activation scales and no LoRA: it can take its input already quantized
        (`__call__`'s prequantized)."""
        return self.scheme.compute == FP8_COMPUTE and self.scheme.activation_scaling == PER_TOKEN and not self.loras

    @property
    def plain_fp8(self) -> bool:
        """`takes_prequantized` and no bias: its matmul can be joined with its neighbours' (`quantization.swiglu`)."""
        return self.takes_prequantized and self.bias is None

    @property
    def quantized_weight(self) -> tuple[jax.Array, jax.Array]:
        """(qkernel [out, in], qscale [out])."""
        return self.qkernel.get_value(), self.qscale.get_value()

    def __call__(self, x: jax.Array, x_scale: jax.Array | None = None,
                 prequantized: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """x [..., in] -> [..., out] in the activation dtype; with LoRAs, `lora_chunk_rows` rows at a time (None: all
        at once). x_scale: a per-tensor FP8 activation scale the caller knows x's values to lie on (e4m3 values
        times it: FP8 attention's output, `quantization.attention.output_scale`), used instead of the scheme's
        activation scales, so those values are not rounded again; weight-only schemes ignore it. prequantized (only
        where `takes_prequantized`): x's per-token e4m3 form (xq [..., in], scale [..., 1]) made by the caller
        (`quantization.modulated_kernel`), multiplied instead of x, which then only carries the gradient."""
        x = x.astype(self.dtype)
        if prequantized is not None:
            if not self.takes_prequantized:
                raise ValueError(f"a {self.scheme.mode!r} Linear with {len(self.loras)} LoRAs cannot take a prequantized "
                                 "input (FP8 compute with per-token scales and no LoRA can)")
            return self._rows(x, None, None, prequantized)
        # weight-only with LoRAs: the weight dequantized once, for the joined GEMM of every chunk (converting int8 to
        # bf16 grows it, so XLA would not hoist it out of the chunks' loop itself)
        joined = self.dequantized_kernel(self.dtype) if self.loras and self.scheme.compute != FP8_COMPUTE else None
        if not self.loras or self.lora_chunk_rows is None:
            return self._rows(x, x_scale, joined)
        tokens = x.reshape(x.shape[0] if x.ndim > 2 else 1, -1, self.in_features)  # [B, T, in]
        if x_scale is None and self.scheme.compute == FP8_COMPUTE and self.scheme.activation_scaling == PER_TENSOR:
            x_scale = activation_scale(tokens, PER_TENSOR)  # of all rows, as unchunked
        out = over_token_chunks(lambda chunk: self._rows(chunk, x_scale, joined), tokens, self.out_features,
                                self.lora_chunk_rows)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _rows(self, x: jax.Array, x_scale: jax.Array | None, joined: jax.Array | None,
              prequantized: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """x [..., in] -> [..., out]: the matmul, bias and LoRA updates summed in float32, rounded once. joined: the
        dequantized kernel [in, out] of a weight-only layer with LoRAs, multiplied in one GEMM with them; None: the
        scheme's quantized matmul, the LoRA updates added after it."""
        if joined is not None:
            y = matmul_with_loras(x, joined, self.loras, self.dtype)
        else:
            y = _quantized_matmul(x, self.qkernel.get_value(), self.qscale.get_value(), x_scale, prequantized,
                                  self.scheme, jnp.dtype(self.dtype))  # float32
            for adapter in self.loras:
                y = y + adapter(x)
        if self.bias is not None:
            y = y + self.bias.get_value().astype(jnp.float32)
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
