"""Splitting the index lists by key range (`kernels.key_ranges`) and the automatic number of ranges.

The split must hand each range exactly the list's entries in that range, whatever order the caller's lists
come in. The forward over key ranges, merged by log-sum-exp, and its gradients are checked per backend in
test_bsa_backends.py (the `key_ranges_*` cases), also where a query block selected nothing in some range.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import BSAParams, KernelConfig, MosaicConfig, bsa_attention, key_ranges, pallas_mosaic
from kernels.key_ranges import auto_fp8_key_ranges, auto_key_ranges, auto_phased_walks, split_by_key_range
from kernels.sparse_attention import sparse_attention_with_lse
from longcat_jax.metrics import rel_l2
from tests.helpers.bsa_cases import dense_attention, dense_whole_call, random_case
from tests.kernels.bsa_test_base import OUTPUT_TOLERANCE


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


@pytest.mark.parametrize("ranges", [2, 3])
def test_lists_known_ascending_split_as_sorted_ones(ranges):
    # the selection's lists are ascending up to their counts; past them anything (here 0, below every range's end)
    *_, indices, counts = random_case(1, b=2, h=3, d=64, mq=5, mk=7, width=6)
    valid = np.arange(6) < np.asarray(counts)[..., None]
    ascending = np.where(valid, np.sort(np.where(valid, indices, 99), axis=-1), 0)
    want = split_by_key_range(ascending, counts, 7, ranges)
    got = split_by_key_range(ascending, counts, 7, ranges, ascending=True)
    for got_array, want_array in zip(got, want, strict=True):
        np.testing.assert_array_equal(got_array, want_array)


def test_auto_key_ranges_follow_one_heads_kv_bytes():
    # LongCat's 720p refinement grids, bf16, head_dim 128: 43 MB of K+V per head fits L2, 86 MB does not
    assert auto_key_ranges(24 * 44 * 80, 128, 2) == 1
    assert auto_key_ranges(48 * 44 * 80, 128, 2) == 2
    assert auto_key_ranges(1024, 64, 2) == 1


def test_auto_phased_walks_phase_heads_that_outgrow_the_l2(monkeypatch):
    # bf16 K+V of one head: 43 MB at 84,480 tokens (plain walks), 86 MB at 168,960 (one phase per SM)
    monkeypatch.setattr(key_ranges, "sm_count", lambda: 132)
    assert auto_phased_walks(24 * 44 * 80, 128, 2) == 0
    assert auto_phased_walks(48 * 44 * 80, 128, 2) == 132
    assert auto_phased_walks(48 * 44 * 80, 128, 1) == 0


def test_sm_count_reads_the_device_and_falls_back_to_hoppers(monkeypatch):
    class Device:  # an H100 PCIe reports 114 SMs
        core_count = 114

    monkeypatch.setattr(key_ranges.jax, "devices", lambda: [Device()])
    assert key_ranges.sm_count() == 114
    monkeypatch.setattr(key_ranges.jax, "devices", lambda: [object()])  # a device that reports none
    assert key_ranges.sm_count() == key_ranges.HOPPER_SM_COUNT == 132


@pytest.mark.parametrize("working_set_blocks, phases", [(2, 3), (6, 0)])
def test_the_bf16_mosaic_forward_phases_by_the_rule_in_one_launch_and_stays_exact(monkeypatch, working_set_blocks, phases):
    # the rule's threshold scaled to a case the interpreter runs: a head's K+V (6 blocks of 64 x 64, bf16 K and V)
    # over a working set of 2 blocks' K+V gets phased walks (3 phases here), within one of 6 plain ones
    monkeypatch.setattr(key_ranges, "L2_WORKING_SET_BYTES", working_set_blocks * 2 * 64 * 64 * 2)
    monkeypatch.setattr(key_ranges, "sm_count", lambda: 3)
    launches = []
    launch = pallas_mosaic.mosaic_forward
    monkeypatch.setattr(
        pallas_mosaic, "mosaic_forward", lambda *args, **kwargs: launches.append(args[6].phased_walks) or launch(*args, **kwargs)
    )
    q, k, v, indices, counts = random_case(2, b=1, h=2, d=64, mq=3, mk=6, width=4)
    config = KernelConfig(forward="mosaic", mosaic=MosaicConfig(interpret=True))
    out, _ = sparse_attention_with_lse(q, k, v, indices, counts, 64, 64, config)
    assert launches == [phases]
    assert rel_l2(out, dense_attention(q, k, v, indices, counts, 64, 64)) < OUTPUT_TOLERANCE


def test_auto_fp8_key_ranges_split_large_heads_with_long_lists():
    # e4m3 K+V of one head: 21.6 MB at 84,480 tokens (one launch), 43 MB at 168,960 (two where lists are long)
    assert auto_fp8_key_ranges(24 * 44 * 80, 128, 330) == 1
    assert auto_fp8_key_ranges(48 * 44 * 80, 128, 330) == 2
    assert auto_fp8_key_ranges(48 * 44 * 80, 128, 165) == 2
    assert auto_fp8_key_ranges(48 * 44 * 80, 128, 82) == 1
    assert auto_fp8_key_ranges(48 * 44 * 80, 64, 330) == 1


def test_the_whole_call_splits_the_selections_lists_unsorted_and_stays_exact():
    # the selection writes each list ascending, so the key ranges' split takes them as they are (no sort)
    latent, chunk = (4, 8, 8), (4, 4, 4)
    params = BSAParams(sparsity=0.5, chunk_3d_shape_q=chunk, chunk_3d_shape_k=chunk)
    q, k, v = (jax.random.normal(key, (1, 256, 2, 64), jnp.float32) for key in jax.random.split(jax.random.key(5), 3))
    config = KernelConfig(forward="triton", key_ranges=2)

    def attention(q, k, v):
        return bsa_attention(q, k, v, latent, latent, params, backend="pallas_interpret", kernel_config=config)

    assert " sort[" not in str(jax.make_jaxpr(attention)(q, k, v))  # nested jaxprs print inside
    assert rel_l2(jax.jit(attention)(q, k, v), dense_whole_call(q, k, v, latent, latent, params)) < 1e-4
