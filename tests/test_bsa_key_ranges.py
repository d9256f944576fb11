"""The forward run once per key range and merged by log-sum-exp (`kernels.key_ranges`).

The split must hand each range exactly the list's entries in that range, whatever order the caller's
lists come in; the merged output and its gradients must match one pass over the whole selection, also
where a query block selected nothing, or nothing in some range.
"""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import BSAConfigError, KernelConfig, MosaicConfig, sparse_attention_chunked
from kernels.key_ranges import auto_key_ranges, split_by_key_range
from kernels.reference import blocked_attention

from bsa_cases import BLOCK, check_gradients_match_reference, random_case, rel_l2


@pytest.mark.parametrize("ranges", [2, 3, 7])
def test_split_gives_each_range_exactly_its_entries(ranges):
    *_, indices, counts = random_case(0, b=2, h=3, d=64, mq=5, mk=7, width=6)
    sorted_indices, starts, range_counts = split_by_key_range(indices, counts, 7, ranges)
    chex.assert_shape((starts, range_counts), (ranges, 2, 3, 5))
    np.testing.assert_array_equal(np.sum(range_counts, axis=0), counts)
    width = -(-7 // ranges)
    for (bi, hi, m), count in np.ndenumerate(np.asarray(counts)):
        selected = set(np.asarray(indices[bi, hi, m, :count]).tolist())
        for r in range(ranges):
            start, n = int(starts[r, bi, hi, m]), int(range_counts[r, bi, hi, m])
            got = np.asarray(sorted_indices[bi, hi, m, start:start + n]).tolist()
            assert got == sorted(i for i in selected if r * width <= i < (r + 1) * width)


def _check_against_reference(config, seed=3, **shape):
    q, k, v, indices, counts = random_case(seed, **shape)
    out = sparse_attention_chunked(q, k, v, indices, counts, BLOCK, BLOCK, backend="pallas_interpret",
                                   kernel_config=config)
    chex.assert_shape(out, q.shape)
    chex.assert_type(out, jnp.bfloat16)
    want = blocked_attention(*(x.astype(jnp.float32) for x in (q, k, v)), indices, counts, BLOCK, BLOCK)
    assert rel_l2(out, want) < 2e-2
    np.testing.assert_array_equal(np.asarray(out[0, :BLOCK, 0], np.float32), 0.0)  # the empty selection


@pytest.mark.parametrize("ranges", [2, 4])
def test_interpret_triton_forward_over_key_ranges_matches_reference(ranges):
    # 4 ranges over 6 key blocks: lists of 1-3 entries leave most ranges empty for most query blocks
    _check_against_reference(KernelConfig(key_ranges=ranges), b=1, h=2, d=64, mq=3, mk=6, width=3)


def test_interpret_mosaic_forward_over_key_ranges_matches_reference():
    config = KernelConfig(forward="mosaic", mosaic=MosaicConfig(), key_ranges=2)
    _check_against_reference(config, b=1, h=1, d=64, mq=3, mk=5, width=4)


def test_interpret_gradients_through_key_ranges_match_reference():
    check_gradients_match_reference(KernelConfig(key_ranges=2), b=1, h=2, d=64, mq=2, mk=4, width=3)


def test_auto_key_ranges_follow_one_heads_kv_bytes():
    # LongCat's 720p refinement grids, bf16, head_dim 128: 43 MB of K+V per head fits L2, 86 MB does not
    assert auto_key_ranges(24 * 44 * 80, 128, 2) == 1
    assert auto_key_ranges(48 * 44 * 80, 128, 2) == 2
    assert auto_key_ranges(1024, 64, 2) == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_key_ranges_must_be_a_positive_int(bad):
    with pytest.raises(BSAConfigError, match="key_ranges must be None or an int >= 1"):
        KernelConfig(key_ranges=bad)


@pytest.mark.gpu
@pytest.mark.parametrize("forward", ["triton", "mosaic"])
def test_gpu_key_ranges_match_one_pass(forward):
    q, k, v, indices, counts = random_case(7, b=2, h=3, d=128, mq=9, mk=24, width=10)
    outs = [sparse_attention_chunked(q, k, v, indices, counts, BLOCK, BLOCK, backend="pallas",
                                     kernel_config=KernelConfig(forward=forward, key_ranges=r)) for r in (1, 2, 5)]
    want = blocked_attention(*(x.astype(jnp.float32) for x in (q, k, v)), indices, counts, BLOCK, BLOCK)
    for out in outs:
        assert rel_l2(out, want) < 2e-2
