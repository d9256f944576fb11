"""The Mosaic GPU backward (`kernels.pallas_mosaic_backward`, `KernelConfig(backward="mosaic")`).

Through the shared BSA checks (`bsa_test_base.BSABackendTests`): dq, dk, dv against the gradients of float32 dense
masked attention over the same selection, in the Mosaic GPU interpreter on the CPU at small sizes (uneven counts,
a query block selecting nothing, odd block counts leaving a consumer idle, head_dim 64 and 128, a deeper pipeline,
a key grid padded to whole chunks) and natively on a GPU (`gpu`), up to 8,192 tokens of 24 heads, with raster-order
output. Besides: a key block that no query block selected gets exactly zero dk and dv, and configurations the
kernels cannot run are refused before any work.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import (
    BSAConfigError,
    BSAInputError,
    GridPadding,
    KernelConfig,
    MosaicConfig,
    block_mask_from_indices,
    from_chunk_order,
    sparse_attention_chunked,
)
from kernels.pallas_mosaic_backward import MosaicBackwardConfig, mosaic_backward
from kernels.reference import blocked_attention
from kernels.sparse_attention import backward_delta, sparse_attention
from tests.helpers.bsa_cases import BLOCK, random_case
from tests.helpers.cuda_lowering import lowered_for_cuda
from tests.helpers.mosaic_interpret import thread_programs_compiled_once
from tests.kernels.bsa_test_base import BSABackendTests, KernelCase, OddGridCase
from tests.kernels.test_bsa_backends import GPU_ODD_GRID_CASES, RASTER_CASES

INTERPRETED = MosaicBackwardConfig(interpret=True)


class _BackwardTests(BSABackendTests):
    """The shared checks for a backward kernel: those of the forward alone are `forward_checked_by`'s (the class
    checking that forward kernel), the selection's `selection_checked_by`'s."""

    forward_checked_by: str
    selection_checked_by: str

    def test_forward_matches_dense_attention(self):
        pytest.skip(f"forward only: checked by {self.forward_checked_by}")

    def test_given_the_mask_matches_the_original(self, bsa_fixture_cases):
        pytest.skip(f"forward only: checked by {self.forward_checked_by}")

    def test_selection_matches_the_original_block_mask(self, bsa_fixture_cases):
        pytest.skip(f"the selection does not depend on the backward kernel: checked by {self.selection_checked_by}")

    def test_whole_call_matches_the_original(self, bsa_fixture_cases):
        pytest.skip(f"forward only: checked by {self.forward_checked_by}")


class TestMosaicBackwardInterpret(_BackwardTests):
    backend = "pallas_interpret"
    forward = "triton"  # the cheaper forward in its interpreter: the backward does not depend on which one ran
    backward = "mosaic"
    gradient_cases = (
        # 3 query blocks: the second CTA's second consumer idle in the dq kernel; 5 key blocks: the same in dk/dv.
        # 3 stages over lists of up to 3 entries: every slot refilled only after its release
        KernelCase("uneven_counts_odd_block_counts_three_stages", b=1, h=2, d=64, mq=3, mk=5, width=3,
                   mosaic_backward=MosaicBackwardConfig(stages=3)),
        # one barrier per gathered buffer (the default: a list entry's gathers all arrive on one)
        KernelCase("uneven_counts_barrier_per_gathered_buffer", b=1, h=2, d=64, mq=3, mk=5, width=3,
                   mosaic_backward=MosaicBackwardConfig(one_gather_barrier=False)),
        # blocks handed out in block order, each step's accumulating product waited for and its tiles released at
        # its end (the other case: longest list first, deferred products, the defaults)
        KernelCase("head_dim_128_two_batches_sentinel_padded_block_order_waited", b=2, h=1, d=128, mq=2, mk=3,
                   width=3, sentinel_padded=True,
                   mosaic_backward=MosaicBackwardConfig(longest_first=False, deferred_accumulate=False)),
    )
    # keys padded along T and H (4 key blocks, 2 query blocks): padded keys masked, their dk and dv zero
    odd_grid_cases = (OddGridCase("q_3x5x4_k_7x5x4", (3, 5, 4), (7, 5, 4), (4, 4, 4), (4, 4, 4)),)
    forward_checked_by = "TestTritonInterpret and TestMosaicInterpret"
    selection_checked_by = "TestTritonInterpret"

    @pytest.fixture(autouse=True, scope="class")
    def _thread_programs_compiled_once(self):
        with thread_programs_compiled_once():  # the interpreter would compile each grid step's threads again
            yield

    def test_whole_call_and_gradients_match_dense_attention(self):
        pytest.skip("the odd-grid case runs the whole call and its gradients through these kernels in the interpreter")

    def test_unselected_key_block_gets_zero_gradient(self):
        q, k, v, _, _ = random_case(8, b=1, h=1, d=64, mq=2, mk=4, width=2)
        # key block 2 is on no list (an entry past its list's count does not count)
        indices = jnp.array([[[[0, 2], [3, 1]]]], jnp.int32)  # [B, H, Mq, K_max]
        counts = jnp.array([[[1, 2]]], jnp.int32)  # [B, H, Mq]
        do = jax.random.normal(jax.random.key(9), q.shape, jnp.float32).astype(q.dtype)
        out, lse = _dense_forward(q, k, v, indices, counts)
        got = jax.jit(lambda *a: mosaic_backward(*a, INTERPRETED))(q, k, v, indices, counts, backward_delta(out, do),
                                                                   lse, do)
        for name, g in zip(("dk", "dv"), got[1:]):
            per_block = np.abs(np.asarray(g[0, :, 0], np.float32)).reshape(4, BLOCK, -1).max(axis=(1, 2))  # [Mk]
            assert per_block[2] == 0.0 and np.all(per_block[[0, 1, 3]] > 0), (name, per_block)


def _dense_forward(q, k, v, indices, counts):
    """The forward's residuals by dense masked attention in float32: out [B, Sq, H, D] in q's dtype and the base-2
    log-sum-exp [B, H, Sq] (no query block of these inputs selects nothing)."""
    mask = block_mask_from_indices(indices, counts, k.shape[1] // BLOCK)  # [B, H, Mq, Mk]
    allowed = jnp.repeat(jnp.repeat(mask, BLOCK, axis=2), BLOCK, axis=3)  # [B, H, Sq, Sk]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * q.shape[-1] ** -0.5
    logits = jnp.where(allowed, logits, -jnp.inf)
    lse = jax.nn.logsumexp(logits, axis=-1)  # [B, H, Sq]
    out = jnp.einsum("bhqk,bkhd->bqhd", jnp.exp(logits - lse[..., None]), v.astype(jnp.float32))
    return out.astype(q.dtype), lse / math.log(2)


def _gradient(kernel_config, block=BLOCK, dtype=jnp.bfloat16, d=64):
    """Traces jax.grad of `sparse_attention_chunked` on 4 blocks (the refusals come before any kernel runs)."""
    q = jnp.zeros((1, 4 * block, 1, d), dtype)
    indices, counts = jnp.zeros((1, 1, 4, 1), jnp.int32), jnp.ones((1, 1, 4), jnp.int32)

    def loss(q):
        out = sparse_attention_chunked(q, q, q, indices, counts, block, block, backend="pallas_interpret",
                                       kernel_config=kernel_config)
        return jnp.sum(out.astype(jnp.float32))

    return jax.eval_shape(jax.grad(loss), q)


def test_mosaic_backward_refuses_what_it_cannot_run():
    with pytest.raises(BSAConfigError, match="KernelConfig.backward='cutlass'"):
        KernelConfig(backward="cutlass")
    with pytest.raises(BSAConfigError, match="stages must be an int >= 2"):
        MosaicBackwardConfig(stages=1)
    with pytest.raises(BSAConfigError, match="longest_first must be True or False, got 'no'"):
        MosaicBackwardConfig(longest_first="no")
    with pytest.raises(BSAConfigError, match="deferred_accumulate must be True or False, got 1"):
        MosaicBackwardConfig(deferred_accumulate=1)
    with pytest.raises(BSAConfigError, match="one_gather_barrier must be True or False, got 'yes'"):
        MosaicBackwardConfig(one_gather_barrier="yes")
    with pytest.raises(BSAConfigError, match="KernelConfig.mosaic_backward must be a kernels.MosaicBackwardConfig"):
        KernelConfig(mosaic_backward=MosaicConfig())
    mosaic = KernelConfig(forward="triton", backward="mosaic")
    with pytest.raises(BSAInputError, match="block_q=128, block_k=128.*use KernelConfig\\(backward='triton'\\)"):
        _gradient(mosaic, block=128)
    with pytest.raises(BSAInputError, match="all bf16 or all f16"):
        _gradient(mosaic, dtype=jnp.float32)
    too_deep = KernelConfig(forward="triton", backward="mosaic", mosaic_backward=MosaicBackwardConfig(stages=3))
    with pytest.raises(BSAConfigError, match="stages=3 and head_dim=128.*lower MosaicBackwardConfig.stages"):
        _gradient(too_deep, d=128)
    assert _gradient(too_deep, d=64).shape == (1, 4 * BLOCK, 1, 64)  # 3 stages fit head_dim 64


def test_auto_backward_takes_mosaic_only_on_hopper_for_inputs_it_supports():
    q = jnp.zeros((1, 4 * BLOCK, 1, 128), jnp.bfloat16)
    auto = KernelConfig()
    assert auto.backward == "auto"
    on_hopper = jax.devices()[0].platform == "gpu" and str(jax.devices()[0].compute_capability).startswith("9.")
    assert auto.uses_mosaic_backward(q, q, q, BLOCK, BLOCK) == on_hopper
    # never where the kernels cannot run or are interpreted: 128-token blocks, float32, the CPU interpreter
    assert not auto.uses_mosaic_backward(q, q, q, 2 * BLOCK, 2 * BLOCK)
    assert not auto.uses_mosaic_backward(*(q.astype(jnp.float32),) * 3, BLOCK, BLOCK)
    assert not auto.interpreted().uses_mosaic_backward(q, q, q, BLOCK, BLOCK)
    assert KernelConfig(backward="mosaic").uses_mosaic_backward(q, q, q, BLOCK, BLOCK)
    assert not KernelConfig(backward="triton").uses_mosaic_backward(q, q, q, BLOCK, BLOCK)


@pytest.mark.parametrize("head_dim, stages, padded", [(128, 2, False), (64, 5, True)], ids=["d128", "d64_5_stages_padded"])
def test_gpu_kernels_lower_for_hopper(head_dim, stages, padded):
    """The GPU path (wgmma, register layouts, shared memory within a CTA's), which the interpreter replaces, lowers
    to Mosaic GPU for CUDA on this CPU, through `sparse_attention`'s custom_vjp: what the lowering checks (layouts,
    operand shapes, shared memory, barrier counts) holds before a GPU sees it."""
    latent = (6, 6, 7)  # keys padded to 8x8x8: 8 key blocks
    padding = GridPadding.of(latent, (4, 4, 4)) if padded else None
    blocks = padding.num_blocks if padded else 8
    config = KernelConfig(forward="mosaic", backward="mosaic", mosaic_backward=MosaicBackwardConfig(stages=stages))
    shape = jax.ShapeDtypeStruct((1, blocks * BLOCK, 2, head_dim), jnp.bfloat16)  # [B, S, H, D]
    indices, counts = jax.ShapeDtypeStruct((1, 2, blocks, 3), jnp.int32), jax.ShapeDtypeStruct((1, 2, blocks), jnp.int32)

    def loss(q, k, v, indices, counts):
        out = sparse_attention(q, k, v, indices, counts, BLOCK, BLOCK, config, None, padding)
        return jnp.sum(out.astype(jnp.float32))

    text = lowered_for_cuda(jax.grad(loss, argnums=(0, 1, 2)), shape, shape, shape, indices, counts)
    assert text.count("custom_call @mosaic_gpu") == 3  # the forward, dq and dk/dv kernels


def _gpu_gradient_case(name, **shape):
    return KernelCase(name, sentinel_padded=True, **shape)


@pytest.mark.gpu
class TestMosaicBackwardGpu(_BackwardTests):
    backend = "pallas"
    forward = "mosaic"
    backward = "mosaic"
    gradient_cases = (
        _gpu_gradient_case("d128", b=2, h=3, d=128, mq=12, mk=20, width=11),
        _gpu_gradient_case("d64_three_stages", b=2, h=3, d=64, mq=12, mk=20, width=11,
                           mosaic_backward=MosaicBackwardConfig(stages=3)),
        # 8,192 tokens of 24 heads, 16 of 128 key blocks per list (sparsity 0.875)
        _gpu_gradient_case("8192_tokens_24_heads", b=1, h=24, d=128, mq=128, mk=128, width=16),
        # head_dim 64 with the default 2 stages over lists of up to all 32 key blocks, no padding
        _gpu_gradient_case("d64_two_stages_lists_up_to_32", b=1, h=2, d=64, mq=32, mk=32, width=32),
        # block order, each step's accumulating product waited for (the others: the defaults)
        _gpu_gradient_case("d128_block_order_waited", b=2, h=3, d=128, mq=12, mk=20, width=11,
                           mosaic_backward=MosaicBackwardConfig(longest_first=False, deferred_accumulate=False)),
        _gpu_gradient_case("d128_barrier_per_gathered_buffer", b=2, h=3, d=128, mq=12, mk=20, width=11,
                           mosaic_backward=MosaicBackwardConfig(one_gather_barrier=False)),
    )
    whole_call_cases = RASTER_CASES
    # all of 64-token chunks: padded key grids, gradients included. Besides the shared ones, two that take the CDF
    # odd grid's factors apart: head_dim 64 on a key grid padded along every axis (top-k lists), and the CDF lists
    # (up to every key block, transposed lists of every query block) with head_dim 128
    odd_grid_cases = (
        *GPU_ODD_GRID_CASES,
        OddGridCase("q_5x9x11_k_7x9x11_d64", (5, 9, 11), (7, 9, 11), (4, 4, 4), (4, 4, 4), d=64),
        OddGridCase("cdf_7x13x10_chunk_2x4x8_d128", (7, 13, 10), (7, 13, 10), (2, 4, 8), (2, 4, 8), sparsity=None,
                    cdf_threshold=0.9, d=128),
    )
    forward_checked_by = "TestMosaicGpu"
    selection_checked_by = "TestTritonGpu"


def test_raster_order_backward_runs_the_delta_pass_where_its_kernels_run():
    """With the output in raster order the backward reorders do and takes delta in one Pallas pass
    (`pallas_chunking.chunk_with_delta`); it is interpreted where the backward kernels are, whatever the Triton
    settings say. Here only the Mosaic kernels are interpreted (a native Triton pass would fail on the CPU); the
    gradients equal the jnp reference's through the same raster-ordered output."""
    latent, chunk = (4, 8, 12), (4, 4, 4)  # 6 blocks
    q, k, v, indices, counts = random_case(11, b=1, h=1, d=64, mq=6, mk=6, width=3, sentinel_padded=True)
    mosaic_only = KernelConfig(forward="mosaic", mosaic=MosaicConfig(interpret=True), backward="mosaic",
                               mosaic_backward=INTERPRETED)
    assert not mosaic_only.triton.interpret
    weights = jax.random.normal(jax.random.key(12), q.shape, jnp.float32)

    def gradients(attention):
        def value(q, k, v):
            return jnp.sum(attention(q, k, v).astype(jnp.float32) * weights)
        return jax.jit(jax.grad(value, argnums=(0, 1, 2)))(q, k, v)

    got = gradients(lambda q, k, v: sparse_attention(q, k, v, indices, counts, BLOCK, BLOCK, mosaic_only, (latent, chunk)))
    want = gradients(lambda q, k, v: from_chunk_order(blocked_attention(q, k, v, indices, counts, BLOCK, BLOCK), latent, chunk))
    for got, want in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2)
