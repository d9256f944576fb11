"""Weight storage formats (FP8 e4m3, INT8) and per-output-channel quantization of a Linear kernel.

A Linear kernel [in, out] is stored quantized as `qkernel` [out, in] (each output channel a contiguous row:
the layout cuBLASLt's FP8 GEMM wants for its second operand, contracting dimension minor, so XLA inserts no
transpose) with one float32 scale per output channel, `qscale` [out]:

    kernel[:, n] ~= qkernel[n, :] * qscale[n]

The scale is the channel's absolute maximum over the format's largest value (absmax scaling): no value
saturates, and a channel's error is relative to its own range. The same functions run on numpy arrays (the
host, while loading or converting) and on jax arrays (on the device, in tests and when quantizing a model that
is already there); both round to nearest even and give the same bits: XLA may compute a division by a broadcast value
as a multiplication by its reciprocal (it does on the CPU), which can differ from numpy's division in the last bit, so
the device path (`quantize_kernel_on_device`, `quantize_rows_on_device`) keeps every division a true one.

The host path works on row chunks of the [out, in] layout in a few threads (numpy releases the GIL in its loops):
bounded float32 temporaries instead of a float32 copy of the whole kernel, and no transpose at all when the kernel
is a transposed view of a checkpoint's torch [out, in] tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

# A channel whose absolute maximum is below this is all zeros for any purpose; its scale is floored here so
# every stored scale is positive (a stored scale <= 0 marks a corrupt checkpoint).
MIN_CHANNEL_ABSMAX = 1e-12
HOST_CHUNK_ELEMENTS = 1 << 22  # rows quantized at once on the host: float32 temporaries of 16 MiB per thread
HOST_THREADS = max(1, min(4, os.cpu_count() or 1))


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    """How quantized weights are stored: the array dtype and the largest magnitude it represents."""

    name: str
    dtype: np.dtype
    max_value: float
    integer: bool

    @property
    def dtype_name(self) -> str:
        return np.dtype(self.dtype).name


FP8_E4M3 = WeightFormat("fp8_e4m3", np.dtype(ml_dtypes.float8_e4m3fn), float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max),
                        integer=False)
INT8 = WeightFormat("int8", np.dtype(np.int8), 127.0, integer=True)
WEIGHT_FORMATS = (FP8_E4M3, INT8)


def format_of_dtype(dtype) -> WeightFormat | None:
    """The weight format stored as `dtype` (None: not a quantized storage dtype)."""
    dtype = np.dtype(dtype)
    return next((fmt for fmt in WEIGHT_FORMATS if fmt.dtype == dtype), None)


def _xp(array):
    return jnp if isinstance(array, jax.Array) else np


def to_format(values, fmt: WeightFormat):
    """float32 values already divided by their scale -> `fmt` storage (clipped to its range, rounded to nearest even)."""
    xp = _xp(values)
    clipped = xp.clip(values, -fmt.max_value, fmt.max_value)
    if fmt.integer:
        clipped = xp.round(clipped)  # numpy and jax both round half to even
    return clipped.astype(fmt.dtype)


def quantize_kernel(kernel, fmt: WeightFormat):
    """kernel [in, out] (any float dtype; numpy or jax) -> (qkernel [out, in] in `fmt`, qscale [out] float32)."""
    if kernel.ndim != 2:
        raise ValueError(f"a Linear kernel is 2-D [in, out], got shape {tuple(kernel.shape)}")
    if not isinstance(kernel, jax.Array):
        return _quantize_rows_host(np.asarray(kernel).T, fmt)
    return quantize_kernel_on_device(kernel, fmt)


def _channel_scales(absmax: np.ndarray, fmt: WeightFormat) -> np.ndarray:
    return (np.maximum(absmax, np.float32(MIN_CHANNEL_ABSMAX)) / np.float32(fmt.max_value)).astype(np.float32)


def _quantize_rows_host(rows: np.ndarray, fmt: WeightFormat) -> tuple[np.ndarray, np.ndarray]:
    """rows [out, in] (a view; contiguous when the kernel is a transposed view of a torch [out, in] tensor) ->
    (qkernel [out, in] contiguous, qscale [out]), in chunks of rows over `HOST_THREADS` threads. The same
    elementwise float32 operations as the jax path, in the same order: the bits do not depend on the chunking."""
    out_features, in_features = rows.shape
    qkernel = np.empty((out_features, in_features), fmt.dtype)
    qscale = np.empty(out_features, np.float32)
    step = max(1, HOST_CHUNK_ELEMENTS // max(in_features, 1))

    def chunk(start: int) -> None:
        values = rows[start:start + step].astype(np.float32)  # [step, in]
        scale = _channel_scales(np.max(np.abs(values), axis=1), fmt)
        np.divide(values, scale[:, None], out=values)
        qscale[start:start + step] = scale
        qkernel[start:start + step] = to_format(values, fmt)

    starts = range(0, out_features, step)
    if len(starts) < 2 or HOST_THREADS == 1:
        for start in starts:
            chunk(start)
    else:
        with ThreadPoolExecutor(min(HOST_THREADS, len(starts)), thread_name_prefix="quantize") as pool:
            for _ in pool.map(chunk, starts):
                pass
    return qkernel, qscale


def _quantize_rows_exactly(rows: jax.Array, fmt: WeightFormat) -> tuple[jax.Array, jax.Array]:
    values = rows.astype(jnp.float32)  # [out, in]
    absmax = jnp.max(jnp.abs(values), axis=1)  # [out]
    max_value = jax.lax.optimization_barrier(jnp.full(absmax.shape, fmt.max_value, jnp.float32))
    qscale = jnp.maximum(absmax, jnp.float32(MIN_CHANNEL_ABSMAX)) / max_value
    divisor = jax.lax.optimization_barrier(jnp.broadcast_to(qscale[:, None], values.shape))  # [out, in]
    return to_format(values / divisor, fmt), qscale


@functools.partial(jax.jit, static_argnames="fmt")
def quantize_rows_on_device(rows: jax.Array, fmt: WeightFormat) -> tuple[jax.Array, jax.Array]:
    """rows [out, in] (a torch-layout Linear weight, any float dtype, on a device) -> (qkernel [out, in], qscale [out]),
    bit for bit what `quantize_kernel(rows.T)` gives on the host.

    The divisors are materialised behind optimization barriers so XLA keeps true divisions instead of multiplying by
    reciprocals; the price is float32 temporaries of the rows' size (one kernel at a time, while loading).
    """
    return _quantize_rows_exactly(rows, fmt)


@functools.partial(jax.jit, static_argnames="fmt")
def quantize_kernel_on_device(kernel: jax.Array, fmt: WeightFormat) -> tuple[jax.Array, jax.Array]:
    """kernel [in, out] on a device -> `quantize_rows_on_device(kernel.T)` (the transpose fused into the same
    program), bit for bit `quantize_kernel(kernel)` on the host."""
    return _quantize_rows_exactly(kernel.T, fmt)


def dequantize_kernel(qkernel, qscale, dtype=np.float32):
    """(qkernel [out, in], qscale [out]) -> kernel [in, out] in `dtype` (computed in float32)."""
    xp = _xp(qkernel)
    rows = xp.asarray(qkernel).astype(xp.float32) * xp.asarray(qscale, dtype=xp.float32)[:, None]
    return rows.T.astype(dtype)
