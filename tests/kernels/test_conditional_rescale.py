"""`MosaicConfig.conditional_rescale`: a thread that skips its accumulator's rescale skips a multiply by exactly 1, so
the forward's output and log-sum-exp must not change by a bit (bf16 and FP8 operands, natively: the interpreter
multiplies every row, and the lowering test covers the inlined branch on the CPU)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from kernels import KernelConfig
from kernels.fp8_operands import quantize_operands
from kernels.sparse_attention import fp8_sparse_attention_with_lse, sparse_attention_with_lse
from tests.helpers.bsa_cases import random_case


def _forward(config: KernelConfig, case):
    q, k, v, indices, counts = case
    if config.fp8:
        return jax.jit(lambda o, i, c: fp8_sparse_attention_with_lse(o, i, c, config))(
            quantize_operands(q, k, v), indices, counts)
    return jax.jit(lambda *a: sparse_attention_with_lse(*a, 64, 64, config))(q, k, v, indices, counts)


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_conditional_rescale_changes_no_bit_on_gpu(fp8):
    case = random_case(5, b=1, h=4, d=128, mq=12, mk=160, width=150)  # long lists: most steps keep their maxima
    base = KernelConfig(forward="mosaic", fp8=fp8, key_ranges=1)
    settings = "mosaic_fp8" if fp8 else "mosaic"
    outputs = []
    for conditional in (False, True):
        mosaic = dataclasses.replace(getattr(base, settings), conditional_rescale=conditional)
        outputs.append(_forward(dataclasses.replace(base, **{settings: mosaic}), case))
    for always, skipped in zip(*outputs, strict=True):
        np.testing.assert_array_equal(np.asarray(skipped), np.asarray(always))
