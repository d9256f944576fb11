"""Weight storage formats (FP8 e4m3, INT8) and per-output-channel quantization of a Linear kernel.

A Linear kernel [in, out] is stored quantized as `qkernel` [out, in] (each output channel a contiguous row:
the layout cuBLASLt's FP8 GEMM wants for its second operand, contracting dimension minor, so XLA inserts no
transpose) with one float32 scale per output channel, `qscale` [out]:

    kernel[:, n] ~= qkernel[n, :] * qscale[n]

The scale is the channel's absolute maximum over the format's largest value (absmax scaling): no value
saturates, and a channel's error is relative to its own range. The same functions run on numpy arrays (the
host, while loading or converting) and on jax arrays (on the device, in tests and when quantizing a model that
is already there); both round to nearest even. XLA's float32 division can differ from numpy's in the last bit,
which moves a value sitting on a rounding boundary by one step (under 1% of the values in the tests).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

# A channel whose absolute maximum is below this is all zeros for any purpose; its scale is floored here so
# every stored scale is positive (a stored scale <= 0 marks a corrupt checkpoint).
MIN_CHANNEL_ABSMAX = 1e-12


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
    xp = _xp(kernel)
    if kernel.ndim != 2:
        raise ValueError(f"a Linear kernel is 2-D [in, out], got shape {tuple(kernel.shape)}")
    rows = xp.asarray(kernel, dtype=xp.float32).T  # [out, in]
    absmax = xp.max(xp.abs(rows), axis=1)  # [out]
    qscale = (xp.maximum(absmax, xp.float32(MIN_CHANNEL_ABSMAX)) / xp.float32(fmt.max_value)).astype(xp.float32)
    qkernel = to_format(rows / qscale[:, None], fmt)
    if xp is np:
        qkernel = np.ascontiguousarray(qkernel)
    return qkernel, qscale


def dequantize_kernel(qkernel, qscale, dtype=np.float32):
    """(qkernel [out, in], qscale [out]) -> kernel [in, out] in `dtype` (computed in float32)."""
    xp = _xp(qkernel)
    rows = xp.asarray(qkernel).astype(xp.float32) * xp.asarray(qscale, dtype=xp.float32)[:, None]
    return rows.T.astype(dtype)
