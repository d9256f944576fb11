"""The Mosaic GPU kernels lower for CUDA on a machine without a GPU.

The interpreter tests (test_bsa_backends.py) replace what only the GPU path builds (wgmma accumulators and their
run_state scopes, register layouts, the FP8 P tile) with plain dots, so a mistake there showed up only on a GPU.
Lowering for the "cuda" platform runs Pallas' Mosaic GPU lowering of every kernel on the CPU, in seconds; ptxas and
the run itself stay with the `gpu`-marked tests.
"""

import jax.numpy as jnp
import pytest

from kernels import KernelConfig, MosaicBackwardConfig, MosaicConfig
from kernels.fp8_operands import quantize_operands
from kernels.padding import GridPadding
from kernels.pallas_mosaic import mosaic_forward
from kernels.pallas_mosaic_backward import mosaic_backward
from tests.helpers.cuda_lowering import lowered_for_cuda

GRID, CHUNK = (4, 8, 12), (4, 4, 4)  # 384 tokens: 6 blocks of 64
PADDED = GridPadding.of((3, 7, 10), CHUNK)  # the same padded grid, short of whole chunks on every axis
B, H, D = 1, 2, 128
BLOCKS = 6

FORWARD_CONFIGS = {
    "schedule_barrier": MosaicConfig(),
    "no_schedule_barrier": MosaicConfig(schedule_barrier=False),
    "two_producers_one_round": MosaicConfig(producers=2, rounds=1),
    "row_sums_by_reduction": MosaicConfig(row_sums_on_tensor_cores=False),
    # the per-thread branch inlined in Mosaic GPU, and the held maximum
    "conditional_rescale_threshold": MosaicConfig(conditional_rescale=True, rescale_threshold=2.0),
    "kernel_config_bf16_default": KernelConfig().mosaic,
    "phased_walks": MosaicConfig(phased_walks=132),
}


def _inputs():
    q = k = v = jnp.zeros((B, BLOCKS * 64, H, D), jnp.bfloat16)  # [B, S, H, D] chunk order
    indices = jnp.tile(jnp.arange(4, dtype=jnp.int32), (B, H, BLOCKS, 1))  # [B, H, Mq, 4]
    counts = jnp.full((B, H, BLOCKS), 4, jnp.int32)
    starts = jnp.zeros_like(counts)
    return q, k, v, indices, starts, counts


# three consumers fit head_dim 128 in shared memory with FP8 operands only
THREE_CONSUMERS = {
    "three_consumers": MosaicConfig(consumers=3, schedule_barrier=False, row_sums_on_tensor_cores=False),
    "three_consumers_tensor_core_sums": MosaicConfig(consumers=3, schedule_barrier=False),
    "three_consumers_conditional_rescale": MosaicConfig(consumers=3, schedule_barrier=False, conditional_rescale=True),
}


@pytest.mark.parametrize(("name", "fp8"), [
    *((name, fp8) for name in FORWARD_CONFIGS for fp8 in (False, True)), *((name, True) for name in THREE_CONSUMERS)
])
def test_forward_lowers_for_cuda(name, fp8):
    q, k, v, indices, starts, counts = _inputs()
    config = {**FORWARD_CONFIGS, **THREE_CONSUMERS}[name]
    if fp8:
        operands = quantize_operands(q, k, v)

        def forward(operands, indices, starts, counts):
            return mosaic_forward(operands.q, operands.k, operands.v_t, indices, starts, counts, config,
                                  raster_out=(GRID, CHUNK), key_padding=PADDED, fp8_scales=operands.kernel_scales(indices),
                                  out_dtype=jnp.bfloat16)

        text = lowered_for_cuda(forward, operands, indices, starts, counts)
    else:
        def forward(q, k, v, indices, starts, counts):
            return mosaic_forward(q, k, v, indices, starts, counts, config, raster_out=(GRID, CHUNK),
                                  key_padding=PADDED)

        text = lowered_for_cuda(forward, q, k, v, indices, starts, counts)
    assert "custom_call @mosaic_gpu" in text


@pytest.mark.parametrize(("deferred", "one_barrier"), [(True, True), (False, True), (True, False)],
                         ids=["deferred_accumulate", "waited_accumulate", "barrier_per_gathered_buffer"])
def test_backward_lowers_for_cuda(deferred, one_barrier):
    q, k, v, indices, _, counts = _inputs()
    lse = jnp.zeros((B, H, q.shape[1]), jnp.float32)
    config = MosaicBackwardConfig(deferred_accumulate=deferred, one_gather_barrier=one_barrier)

    def backward(q, k, v, indices, counts, lse):
        return mosaic_backward(q, k, v, indices, counts, lse, lse, q, config, key_padding=PADDED)

    assert "custom_call @mosaic_gpu" in lowered_for_cuda(backward, q, k, v, indices, counts, lse)
