"""Error-compensating rounding of a Linear kernel (GPTQ, Frantar et al. 2022) into the stored weight formats.

Round to nearest (`formats.quantize_kernel`) rounds every weight alone; its error in the layer's output is
E^T x for the kernel's error E, whatever the inputs x are. GPTQ uses the inputs' second moment M = E[x x^T]
[in, in] (from calibration runs of the model): it rounds the kernel's input rows in order and spreads each row's
rounding error over the rows not yet rounded, along the directions M says the inputs do not take, which lowers
tr(E^T M E), the output's mean squared error. The result is stored exactly as round to nearest stores it:
`qkernel` [out, in] in the format with the same per-output-channel absmax scales `qscale` [out], so a GPTQ
checkpoint loads and runs as any other.

Why: on a random DiT of the real width, the GEMM inputs are far from isotropic (`benchmarks/gemm_input_isotropy.py`)
and GPTQ into the INT8 grid cut block 1's held-out GEMM error 6.3-6.5x against round to nearest
(`benchmarks/gptq_probe.py`), where INT8's 1e-2 DiT-output target needs about 2.5x.

The algorithm is GPTQ's lazy-batch form: the damped M = H is inverted through its Cholesky factor, U is the upper
Cholesky factor of H^-1, and rows are rounded in blocks of `BLOCK_ROWS`: inside a block row by row (each error
divided by U's diagonal, subtracted from the block's later rows through U's row), then the block's errors update
all later rows at once with one GEMM. Everything runs in float32 on the default JAX device (one jitted program per
kernel shape); a kernel whose input width is not a multiple of `BLOCK_ROWS` is padded with zero rows, which round
to zero and change nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from longcat_jax.errors import ConfigError
from longcat_jax.quantization.formats import WeightFormat, quantize_kernel, to_format

BLOCK_ROWS = 128
DAMPING = 0.01  # added to M's diagonal, times its mean: keeps H invertible where inputs never vary (GPTQ's default)


def _inverse_cholesky_upper(moment: jax.Array, damping: float) -> jax.Array:
    """U [in, in] upper triangular with U^T U = (M + damping * mean(diag M) * I)^-1."""
    d = moment.shape[0]
    level = jnp.maximum(jnp.mean(jnp.diag(moment)), jnp.float32(1e-30))  # all-zero inputs: round to nearest
    hessian = moment + damping * level * jnp.eye(d, dtype=jnp.float32)
    lower = jnp.linalg.cholesky(hessian)
    inverse = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(d, dtype=jnp.float32))
    return jnp.linalg.cholesky(inverse).T


@functools.partial(jax.jit, static_argnames=("fmt", "damping"))
def _gptq(kernel: jax.Array, moment: jax.Array, scales: jax.Array, fmt: WeightFormat, damping: float):
    d, out = kernel.shape
    padded = -(-d // BLOCK_ROWS) * BLOCK_ROWS
    w = jnp.zeros((padded, out), jnp.float32).at[:d].set(kernel.astype(jnp.float32))  # [in', out]
    m = jnp.eye(padded, dtype=jnp.float32).at[:d, :d].set(moment.astype(jnp.float32))
    upper = _inverse_cholesky_upper(m, damping)  # [in', in']
    rows = jnp.arange(BLOCK_ROWS)
    columns = jnp.arange(padded)

    def block(index, carry):
        w, codes = carry
        start = index * BLOCK_ROWS
        w_block = jax.lax.dynamic_slice_in_dim(w, start, BLOCK_ROWS, axis=0)  # [R, out]
        u_rows = jax.lax.dynamic_slice_in_dim(upper, start, BLOCK_ROWS, axis=0)  # [R, in']
        u_block = jax.lax.dynamic_slice_in_dim(u_rows, start, BLOCK_ROWS, axis=1)  # [R, R]

        def row(i, inner):
            w_block, code_block, errors = inner
            code = to_format(w_block[i] / scales, fmt)  # [out]
            error = (w_block[i] - code.astype(jnp.float32) * scales) / u_block[i, i]
            w_block = w_block - jnp.where(rows > i, u_block[i], 0.0)[:, None] * error[None, :]
            return w_block, code_block.at[i].set(code), errors.at[i].set(error)

        inner = (w_block, jnp.zeros((BLOCK_ROWS, out), fmt.dtype), jnp.zeros((BLOCK_ROWS, out), jnp.float32))
        _, code_block, errors = jax.lax.fori_loop(0, BLOCK_ROWS, row, inner)
        later = jnp.where(columns >= start + BLOCK_ROWS, u_rows, 0.0)  # [R, in']: the rows after this block
        w = w - jnp.dot(later.T, errors, precision=jax.lax.Precision.HIGHEST)
        return w, jax.lax.dynamic_update_slice_in_dim(codes, code_block, start, axis=0)

    codes = jnp.zeros((padded, out), fmt.dtype)
    _, codes = jax.lax.fori_loop(0, padded // BLOCK_ROWS, block, (w, codes))
    return codes[:d].T, scales  # [out, in], [out]


def gptq_quantize_kernel(kernel, moment, fmt: WeightFormat, *, damping: float = DAMPING):
    """kernel [in, out] and its inputs' second moment `moment` [in, in] (x^T x over the calibration tokens divided
    by their count) -> (qkernel [out, in] in `fmt`, qscale [out] float32), the layout and scales of
    `formats.quantize_kernel`, with GPTQ's rounding. numpy or jax inputs; jax arrays out.
    """
    if kernel.ndim != 2 or tuple(moment.shape) != (kernel.shape[0], kernel.shape[0]):
        raise ConfigError(f"GPTQ needs a kernel [in, out] and its inputs' moment [in, in]; got kernel "
                          f"{tuple(kernel.shape)} and moment {tuple(moment.shape)}")
    if not np.isfinite(np.asarray(jnp.trace(jnp.asarray(moment, jnp.float32)))):
        raise ConfigError("the calibration inputs' second moment is not finite: a calibration run overflowed or "
                          "produced NaN; check the calibration inputs")
    if not 0.0 < damping:
        raise ConfigError(f"GPTQ's damping must be positive, got {damping=}")
    kernel = jnp.asarray(kernel)  # one copy to the device, where both the scales and GPTQ are computed
    _, scales = quantize_kernel(kernel, fmt)  # round to nearest's scales, bit for bit (its device path)
    return _gptq(kernel, jnp.asarray(moment, jnp.float32), scales, fmt, float(damping))
