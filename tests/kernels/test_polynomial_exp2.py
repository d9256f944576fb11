"""`MosaicConfig.polynomial_exp2_every`: a share of the softmax weights' exp2 by a polynomial (`mosaic_common.mixed_exp2`).

The polynomial's error and its edge values are checked in jnp (`exp2_polynomial`, the same steps); the inlined Mosaic
GPU form against it natively, register by register; and the whole forward with it against the one without.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from kernels import BSAConfigError, KernelConfig, MosaicConfig
from kernels.mosaic_common import EXP2_FLOOR, exp2_polynomial, mixed_exp2
from kernels.sparse_attention import sparse_attention_with_lse
from tests.helpers.bsa_cases import random_case
from tests.helpers.cuda_lowering import lowered_for_cuda


def test_the_polynomial_is_within_8e_5_of_exp2_and_never_negative_or_nan():
    x = jnp.concatenate([jnp.linspace(-130.0, 12.0, 400_001), jnp.array([-jnp.inf, -0.0, 0.0, EXP2_FLOOR])])
    got, want = np.asarray(exp2_polynomial(x)), np.asarray(jnp.exp2(x))
    normal = want > 2.0**EXP2_FLOOR
    np.testing.assert_allclose(got[normal], want[normal], rtol=8e-5)
    assert np.all(np.isfinite(got)) and np.all(got >= 0)
    assert np.all(got[~normal] <= 2.0 ** (EXP2_FLOOR + 1))  # below the floor: about 2^-126, not a wrapped exponent


def test_polynomial_exp2_every_is_checked():
    for bad in (-1, 1.5, True):
        with pytest.raises(BSAConfigError, match="polynomial_exp2_every must be an int >= 0"):
            MosaicConfig(polynomial_exp2_every=bad)


def _exp2_kernel(every: int):
    """A one-warpgroup Mosaic GPU kernel: (x [64, 64] float32, `mixed_exp2` of it), x made in the kernel in the wgmma
    layout: the softmax's range, logits less the row maximum (<= 0) plus FP8's weight exponent (up to 8), with -inf
    (a masked key), 0 and -200 in row 0."""

    def kernel(x_ref, out_ref):
        def iota(dimension):
            return plgpu.broadcasted_iota(jnp.int32, (64, 64), dimension, layout=plgpu.Layout.WGMMA)

        position = iota(0) * 64 + iota(1)
        x = (position.astype(jnp.float32) * (48.0 / 4096.0) - 40.0) * jnp.where(position % 2 == 0, 1.0, 0.71)
        x = jnp.where(position == 0, -jnp.inf, jnp.where(position == 1, 0.0, jnp.where(position == 2, -200.0, x)))
        x_ref[...] = x
        out_ref[...] = mixed_exp2(x, every)

    shape = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    return pl.pallas_call(kernel, out_shape=(shape, shape), compiler_params=plgpu.CompilerParams())


def test_mixed_exp2_lowers_for_cuda():
    assert "custom_call @mosaic_gpu" in lowered_for_cuda(_exp2_kernel(4))


@pytest.mark.gpu
@pytest.mark.parametrize("every", [1, 4, 0])
def test_mixed_exp2_matches_its_jnp_form_on_gpu(every):
    x, got = (np.asarray(a) for a in jax.jit(_exp2_kernel(every))())
    assert x[0, 0] == -np.inf and x.min(initial=0, where=np.isfinite(x)) == -200 and x.max() > 7
    polynomial, special = np.asarray(exp2_polynomial(x)), np.asarray(jnp.exp2(x))
    np.testing.assert_allclose(got, special, rtol=8e-5, atol=2.0 ** (EXP2_FLOOR + 1))
    if every == 1:  # every register by the polynomial: its jnp form's values
        np.testing.assert_allclose(got, polynomial, rtol=1e-6, atol=2.0 ** (EXP2_FLOOR + 1))
    # the entries off ex2.approx's values: the polynomial's share, less the few where its error (up to 7.5e-5) is under
    # 1e-6 (its error curve crosses zero a few times in each octave)
    share = 1 - np.isclose(got, special, rtol=1e-6, atol=0).mean()
    assert share == pytest.approx({1: 0.96, 4: 0.24, 0: 0.0}[every], abs=0.05)


@pytest.mark.gpu
def test_the_forward_with_polynomial_exp2_matches_the_one_without_on_gpu():
    q, k, v, indices, counts = random_case(7, b=1, h=4, d=128, mq=12, mk=160, width=150)
    base = KernelConfig(forward="mosaic", key_ranges=1)
    outputs = []
    for every in (0, 4):
        config = dataclasses.replace(base, mosaic=dataclasses.replace(base.mosaic, polynomial_exp2_every=every))
        outputs.append(jax.jit(lambda *a, c=config: sparse_attention_with_lse(*a, 64, 64, c))(q, k, v, indices, counts))
    (out, lse), (out_poly, lse_poly) = outputs
    np.testing.assert_allclose(np.asarray(lse_poly), np.asarray(lse), atol=1e-3)
    error = float(jnp.linalg.norm((out_poly - out).astype(jnp.float32)) / jnp.linalg.norm(out.astype(jnp.float32)))
    assert error < 4e-3  # bf16 rounding of the output and the weights; the polynomial adds at most 8e-5
