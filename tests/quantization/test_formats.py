"""Per-output-channel quantization of Linear kernels: round trips, error bounds, numpy and jax agreeing bit for bit."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from longcat_jax.quantization import FP8_E4M3, INT8, dequantize_kernel, quantize_kernel
from longcat_jax.quantization.formats import MIN_CHANNEL_ABSMAX, format_of_dtype

FORMATS = [FP8_E4M3, INT8]


def _kernel(seed=0, shape=(96, 40)):
    rng = np.random.default_rng(seed)
    # Output channels of very different ranges: per-channel scales must follow each one.
    return (rng.standard_normal(shape) * np.exp(2 * rng.standard_normal((1, shape[1])))).astype(np.float32)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_layout_dtypes_and_scales(fmt):
    kernel = _kernel()
    qkernel, qscale = quantize_kernel(kernel, fmt)
    assert qkernel.shape == (40, 96) and qkernel.dtype == fmt.dtype and qkernel.flags.c_contiguous
    assert qscale.shape == (40,) and qscale.dtype == np.float32
    np.testing.assert_allclose(qscale, np.abs(kernel).max(axis=0) / fmt.max_value, rtol=1e-6)
    # Each channel's largest magnitude maps onto the format's largest value: nothing saturates.
    np.testing.assert_array_equal(np.abs(qkernel.astype(np.float32)).max(axis=1), fmt.max_value)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_round_trip_error_is_within_half_a_step(fmt):
    kernel = _kernel(1)
    qkernel, qscale = quantize_kernel(kernel, fmt)
    back = dequantize_kernel(qkernel, qscale)
    assert back.shape == kernel.shape and back.dtype == np.float32
    err = np.abs(back - kernel)
    # int8: half an integer step of each channel; e4m3 keeps 3 mantissa bits: within 2^-4 relative for normal
    # values, half the subnormal step below them.
    assert np.all(err <= _half_step(kernel, qscale, fmt) * (1 + 1e-6))
    # Quantizing the dequantized kernel again gives the same bits (the grid is stable).
    again, again_scale = quantize_kernel(back, fmt)
    np.testing.assert_array_equal(again.view(np.uint8), qkernel.view(np.uint8))
    np.testing.assert_allclose(again_scale, qscale, rtol=1e-6)


def _half_step(values, qscale, fmt):
    """Half the quantization step at each value of a kernel [in, out] with channel scales qscale [out]."""
    if fmt.integer:
        return np.broadcast_to(qscale[None, :] / 2, values.shape)
    scaled = np.abs(values) / qscale[None, :]
    return np.where(scaled >= 2.0**-6, scaled * 2.0**-4, 2.0**-10) * qscale[None, :]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_numpy_and_jax_agree(fmt):
    """The host (numpy) and the device (XLA) quantize alike: XLA's float32 division may differ from numpy's in
    the last bit, which moves a value that sits on a rounding boundary by one step, nothing more."""
    kernel = _kernel(2).astype(ml_dtypes.bfloat16)
    q_np, s_np = quantize_kernel(kernel, fmt)
    q_jx, s_jx = quantize_kernel(jnp.asarray(kernel), fmt)
    np.testing.assert_allclose(np.asarray(s_jx), s_np, rtol=2e-7)
    back_np = dequantize_kernel(q_np, s_np)
    back_jx = np.asarray(dequantize_kernel(q_jx, s_jx))
    assert np.all(np.abs(back_jx - back_np) <= 2.001 * _half_step(back_np, s_np, fmt))
    assert np.mean(np.asarray(q_jx).view(np.uint8) != q_np.view(np.uint8)) < 0.01


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_zero_channel_gets_a_positive_scale_and_zeros(fmt):
    kernel = _kernel(3)
    kernel[:, 5] = 0.0
    qkernel, qscale = quantize_kernel(kernel, fmt)
    assert np.all(qscale > 0)
    assert qscale[5] == np.float32(MIN_CHANNEL_ABSMAX / fmt.max_value)
    assert not np.any(qkernel[5].astype(np.float32))


def test_format_of_dtype_and_refusals():
    assert format_of_dtype(ml_dtypes.float8_e4m3fn) is FP8_E4M3
    assert format_of_dtype(np.int8) is INT8
    assert format_of_dtype(np.float32) is None
    with pytest.raises(ValueError, match="2-D"):
        quantize_kernel(np.ones((2, 3, 4), np.float32), INT8)
