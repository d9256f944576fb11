"""BSA parameters, token layout, selection rules and the public call's validation (no fixtures)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import (
    BSAConfigError,
    BSAInputError,
    BSAParams,
    KernelConfig,
    block_mask_from_indices,
    bsa_attention,
    chunk_order_permutation,
    from_chunk_order,
    indices_from_block_mask,
    inverse_permutation,
    pallas_topk,
    pallas_topk_with_v,
    reference,
    resolve_backend,
    select_blocks,
    selection,
    sparse_attention_chunked,
    to_chunk_order,
)
from tests.helpers.cuda_lowering import lowered_for_cuda


def test_params_defaults_match_the_original_config():
    params = BSAParams()
    assert (params.sparsity, params.cdf_threshold) == (0.9375, None)
    assert params.chunk_3d_shape_q == params.chunk_3d_shape_k == (4, 4, 4)
    assert params.chunk_size_q == 64


def test_params_from_dict_reads_json_lists_and_refuses_unknown_keys():
    params = BSAParams.from_dict(
        {"sparsity": None, "cdf_threshold": 0.98, "chunk_3d_shape_q": [8, 4, 4], "chunk_3d_shape_k": [4, 4, 4]}
    )
    assert params.chunk_3d_shape_q == (8, 4, 4) and params.chunk_size_q == 128
    with pytest.raises(BSAConfigError, match="chunk_shape_q"):
        BSAParams.from_dict({"sparsity": 0.9, "chunk_shape_q": [4, 4, 4]})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.0}, r"\[0, 1\)"),
        ({"sparsity": -0.1}, r"\[0, 1\)"),
        ({"sparsity": None, "cdf_threshold": 0.0}, r"\(0, 1\]"),
        ({"sparsity": None, "cdf_threshold": 1.5}, r"\(0, 1\]"),
        ({"sparsity": None, "cdf_threshold": None}, "selection rule"),
        ({"chunk_3d_shape_q": (4, 4)}, "three positive ints"),
        ({"chunk_3d_shape_k": (4, 0, 4)}, "three positive ints"),
    ],
)
def test_params_validation(kwargs, message):
    with pytest.raises(BSAConfigError, match=message):
        BSAParams(**kwargs)


def test_chunk_order_round_trip_and_permutation():
    latent, chunk = (4, 4, 8), (2, 2, 4)
    x = jax.random.normal(jax.random.key(0), (2, 128, 3, 8))
    chunked = to_chunk_order(x, latent, chunk)
    perm = chunk_order_permutation(latent, chunk)
    np.testing.assert_array_equal(chunked, x[:, perm])
    np.testing.assert_array_equal(from_chunk_order(chunked, latent, chunk), x)
    np.testing.assert_array_equal(chunked[:, inverse_permutation(perm)], x)
    # the first block is the (t, h, w) < (2, 2, 4) corner of the grid, in raster order
    corner = x.reshape(2, 4, 4, 8, 3, 8)[:, :2, :2, :4].reshape(2, 16, 3, 8)
    np.testing.assert_array_equal(chunked[:, :16], corner)


def test_chunk_that_does_not_divide_the_grid_is_named():
    with pytest.raises(BSAConfigError, match=r"\(4, 4, 4\).*\(6, 8, 8\) along T"):
        to_chunk_order(jnp.zeros((1, 384, 1, 8)), (6, 8, 8), (4, 4, 4))


def _random_qk(key, b=1, h=2, mq=8, mk=16, chunk=4, d=16):
    kq, kk = jax.random.split(key)
    q = jax.random.normal(kq, (b, mq * chunk, h, d))
    k = jax.random.normal(kk, (b, mk * chunk, h, d))
    return q, k


def test_topk_selects_the_best_scoring_blocks():
    q, k = _random_qk(jax.random.key(1))
    params = BSAParams(sparsity=0.75, chunk_3d_shape_q=(1, 2, 2), chunk_3d_shape_k=(1, 2, 2))
    indices, counts = select_blocks(q, k, params)
    chex.assert_shape(indices, (1, 2, 8, 4))
    chex.assert_type(indices, jnp.int32)
    np.testing.assert_array_equal(counts, 4)
    scores = selection.block_scores(q, k, 4, 4)
    expected = jnp.sort(jax.lax.top_k(scores, 4)[1], axis=-1)
    np.testing.assert_array_equal(indices, expected)


def test_cdf_counts_follow_the_cumulative_softmax_and_combine_with_topk_by_max():
    q, k = _random_qk(jax.random.key(2), d=16)
    q = q * 4.0  # peaked block scores, so counts vary between query blocks
    chunk = (1, 2, 2)
    cdf = BSAParams(sparsity=None, cdf_threshold=0.9, chunk_3d_shape_q=chunk, chunk_3d_shape_k=chunk)
    _, counts = select_blocks(q, k, cdf)
    weights = np.asarray(jax.nn.softmax(selection.block_scores(q, k, 4, 4) / 4.0, axis=-1), np.float64)
    cumulative = np.cumsum(-np.sort(-weights, axis=-1), axis=-1)
    np.testing.assert_array_equal(counts, (cumulative <= 0.9).sum(-1))
    assert len(np.unique(counts)) > 1
    both = BSAParams(sparsity=0.75, cdf_threshold=0.9, chunk_3d_shape_q=chunk, chunk_3d_shape_k=chunk)
    _, counts_both = select_blocks(q, k, both)
    np.testing.assert_array_equal(counts_both, np.maximum(counts, 4))


@pytest.mark.parametrize("rule", [dict(sparsity=None, cdf_threshold=1e-6), dict(sparsity=0.9375)])
def test_each_rule_keeps_at_least_the_best_block(rule):
    # The original keeps none here (the best block alone holds more than the threshold; 0.9375 of 8 blocks rounds
    # to 0), and such a query block outputs 0.
    q, k = _random_qk(jax.random.key(3), mk=8)
    chunk = (1, 2, 2)
    indices, counts = select_blocks(q, k, BSAParams(**rule, chunk_3d_shape_q=chunk, chunk_3d_shape_k=chunk))
    np.testing.assert_array_equal(counts, 1)
    np.testing.assert_array_equal(indices[..., 0], jnp.argmax(selection.block_scores(q, k, 4, 4), axis=-1))


def test_a_cdf_threshold_of_one_keeps_every_block():
    q, k = _random_qk(jax.random.key(5), mq=8, mk=64)  # a float32 cumulative sum of 64 weights can end above 1
    chunk = (1, 2, 2)
    indices, counts = select_blocks(q, k, BSAParams(sparsity=None, cdf_threshold=1.0, chunk_3d_shape_q=chunk,
                                                    chunk_3d_shape_k=chunk))
    np.testing.assert_array_equal(counts, 64)
    np.testing.assert_array_equal(indices, np.broadcast_to(np.arange(64), indices.shape))


@pytest.mark.parametrize("sparsity, blocks, kept", [(0.9, 10, 1), (0.8, 5, 1), (0.9, 30, 3), (0.9, 100, 10),
                                                    (0.9375, 8, 1), (0.9375, 1320, 82), (0.875, 1320, 165)])
def test_topk_counts_round_down_without_float_error_and_keep_one(sparsity, blocks, kept):
    assert BSAParams(sparsity=sparsity).num_topk(blocks) == kept


def test_a_query_block_with_count_zero_outputs_zero():
    q, k = _random_qk(jax.random.key(3))
    indices = jnp.zeros((1, 2, 8, 1), jnp.int32)
    out = reference.blocked_attention(q, k, k, indices, jnp.zeros((1, 2, 8), jnp.int32), 4, 4)
    np.testing.assert_array_equal(out, 0.0)


def test_counts_past_the_index_width_are_refused():
    q, k = _random_qk(jax.random.key(3), d=64)
    indices = jnp.zeros((1, 2, 8, 2), jnp.int32)
    with pytest.raises(BSAInputError, match=r"counts must be in 0..2 .*got 5..5"):
        sparse_attention_chunked(q, k, k, indices, jnp.full((1, 2, 8), 5, jnp.int32), 4, 4, backend="reference")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the refusal where there is no GPU")
def test_the_pallas_backend_off_a_gpu_is_refused_with_the_fix():
    with pytest.raises(BSAConfigError, match="'pallas' runs its kernels on an NVIDIA GPU.*use 'pallas_interpret'"):
        resolve_backend("pallas")


def test_mask_and_index_conversions_agree():
    q, k = _random_qk(jax.random.key(4))
    params = BSAParams(sparsity=0.5, chunk_3d_shape_q=(1, 2, 2), chunk_3d_shape_k=(1, 2, 2))
    indices, counts = select_blocks(q, k, params)
    mask = block_mask_from_indices(indices, counts, 16)
    back, back_counts = indices_from_block_mask(mask)
    np.testing.assert_array_equal(back_counts, counts)
    np.testing.assert_array_equal(back[..., :8], indices)
    k_indices, k_counts = selection.transpose_selection(indices, counts, 16)
    np.testing.assert_array_equal(block_mask_from_indices(k_indices, k_counts, 8), jnp.swapaxes(mask, -1, -2))


@pytest.mark.parametrize("rank_dtype", [None, jnp.int32])
def test_transposed_lists_are_the_masks_columns_ascending_and_padded(rank_dtype):
    """Uneven lists (as CDF gives) with junk past their counts: each key block's list holds exactly the query blocks
    that kept it, ascending, padded with the query block count, as the sorted columns of the mask (with the running
    sum in int16, the default here, and in int32)."""
    rng = np.random.default_rng(0)
    b, h, mq, mk, width = 2, 3, 11, 17, 9
    indices = np.stack([rng.permutation(mk)[:width] for _ in range(b * h * mq)]).reshape(b, h, mq, width)
    counts = rng.integers(0, width + 1, (b, h, mq)).astype(np.int32)
    indices = np.where(np.arange(width) < counts[..., None], indices, rng.integers(0, 3 * mk, indices.shape))
    k_indices, k_counts = selection.transpose_selection(jnp.asarray(indices, jnp.int32), jnp.asarray(counts), mk,
                                                         rank_dtype)
    assert k_indices.dtype == k_counts.dtype == jnp.int32
    mask = block_mask_from_indices(jnp.asarray(indices, jnp.int32), jnp.asarray(counts), mk)
    expected, expected_counts = indices_from_block_mask(jnp.swapaxes(mask, -1, -2))
    np.testing.assert_array_equal(k_counts, expected_counts)
    np.testing.assert_array_equal(k_indices, expected)
    assert int(k_counts.sum()) == int(counts.sum())


def test_transposed_lists_refuse_a_running_sum_too_narrow_for_the_query_blocks():
    indices, counts = jnp.zeros((1, 1, 200, 2), jnp.int32), jnp.ones((1, 1, 200), jnp.int32)
    with pytest.raises(BSAInputError, match=r"rank_dtype int8 cannot count 200 query blocks \(.*\); use int32 or None"):
        selection.transpose_selection(indices, counts, 4, jnp.int8)
    with pytest.raises(BSAInputError, match="rank_dtype float32 cannot count"):
        selection.transpose_selection(indices, counts, 4, jnp.float32)
    with pytest.raises(BSAInputError, match="rank_dtype uint16 cannot count"):  # unsigned: refused as well
        selection.transpose_selection(indices, counts, 4, jnp.uint16)
    with pytest.raises(BSAInputError, match="rank_dtype sixteen bits cannot count"):
        selection.transpose_selection(indices, counts, 4, "sixteen bits")


@pytest.mark.parametrize(
    "shapes, latent_q, message",
    [
        (((1, 64, 2, 16), (1, 64, 2, 16)), (1, 8, 8), None),
        (((1, 64, 2, 16), (1, 64, 2, 16)), (2, 8, 8), "holds 128"),
        (((1, 64, 2, 16), (1, 64, 3, 16)), (1, 8, 8), "agree in batch, heads"),
        (((1, 64, 2, 16), (1, 64, 2, 16)), (1, 4, 16), None),
    ],
)
def test_bsa_attention_validates_inputs(shapes, latent_q, message):
    q = jnp.ones(shapes[0])
    k = jnp.ones(shapes[1])
    params = BSAParams(sparsity=0.5, chunk_3d_shape_q=(1, 4, 4), chunk_3d_shape_k=(1, 4, 4))
    if message is None:
        out = bsa_attention(q, k, k, latent_q, (1, 8, 8), params, backend="reference")
        chex.assert_shape(out, shapes[0])
    else:
        with pytest.raises(BSAInputError, match=message):
            bsa_attention(q, k, k, latent_q, (1, 8, 8), params)


def test_bsa_attention_refuses_unknown_backend_and_non_params():
    q = jnp.ones((1, 64, 2, 16))
    params = BSAParams(sparsity=0.5, chunk_3d_shape_q=(1, 4, 4), chunk_3d_shape_k=(1, 4, 4))
    with pytest.raises(BSAConfigError, match="backend"):
        bsa_attention(q, q, q, (1, 8, 8), (1, 8, 8), params, backend="cuda")
    with pytest.raises(BSAConfigError, match="BSAParams"):
        bsa_attention(q, q, q, (1, 8, 8), (1, 8, 8), {"sparsity": 0.5})


def _top_k_cases():
    scores = jax.random.normal(jax.random.key(9), (3, 2, 100))
    yield scores, 9
    yield jnp.round(scores * 2) / 2, 30  # many ties, negatives and zeros
    yield scores[..., :37], 37  # every block, row shorter than its padded length
    yield jnp.full((2, 3, 50), 1.5), 7  # all tied: the radix search never stops early
    # with split_rows, rows held as several pieces (`row_pieces`): 300 -> 256 + 128 lanes, 1320 -> 1024 + 256 + 128
    wide = jax.random.normal(jax.random.key(10), (2, 3, 1320))
    yield jnp.round(wide[..., :300] * 2) / 2, 100  # ties that run across the pieces' boundary
    yield wide, 165
    yield jnp.full((1, 2, 300), -0.5).at[:, :, 290:].set(1.0), 270  # the ties wanted lie in both pieces
    # signs: only negative scores; -inf below the k-th; -0.0 below 0.0, as jax.lax.top_k orders them (k = 62 leaves out
    # the -0.0 at 5 and the -1e-30 at 40, where a tie of the zeros would leave out the last zero instead)
    yield -jnp.abs(scores) - 1.0, 20
    yield jnp.full((1, 3, 40), -jnp.inf).at[:, :, 3:9].set(-2.0), 5
    yield jnp.zeros((1, 1, 64)).at[0, 0, 5].set(-0.0).at[0, 0, 40].set(-1e-30), 62


def _check_top_k(scores, k, *, interpret, split_rows=False):
    got = pallas_topk.top_k_indices(scores, k, interpret=interpret, split_rows=split_rows)
    chex.assert_type(got, jnp.int32)
    np.testing.assert_array_equal(got, jnp.sort(jax.lax.top_k(scores, k)[1], axis=-1))


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_the_whole_call_passes_kernel_configs_row_pieces_to_the_top_k(monkeypatch, fp8):
    forms = []
    # FP8's top-k runs in one launch with V's pass
    module, name = (pallas_topk_with_v, "top_k_and_v_to_e4m3") if fp8 else (pallas_topk, "top_k_indices")
    top_k = getattr(module, name)

    def recorded(*args, **kwargs):
        forms.append(kwargs["split_rows"])
        return top_k(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)
    q, k = (jax.random.normal(key, (1, 256, 1, 64), jnp.bfloat16) for key in jax.random.split(jax.random.key(12)))
    params = BSAParams(sparsity=0.5)  # 4x4x4 chunks: the 4x8x8 grid's 4 blocks of 64 tokens, as FP8 needs
    for pieces in (None, False, True):
        config = KernelConfig(forward="auto" if fp8 else "triton", fp8=fp8, top_k_row_pieces=pieces)
        jax.eval_shape(lambda q, k, config=config: bsa_attention(q, k, k, (4, 8, 8), (4, 8, 8), params,
                                                                 backend="pallas_interpret", kernel_config=config), q, k)
    assert forms == [None, False, True]


def test_the_selection_takes_the_top_k_kernels_row_pieces():
    scores = jax.random.normal(jax.random.key(11), (1, 2, 3, 300))
    params = BSAParams(sparsity=0.75)
    want = selection.select_from_scores(scores, params, 64)
    for pieces in (False, True):
        got = selection.select_from_scores(scores, params, 64, backend="pallas_interpret", top_k_row_pieces=pieces)
        for got_array, want_array in zip(got, want, strict=True):
            np.testing.assert_array_equal(got_array, want_array)
    with pytest.raises(BSAConfigError, match="KernelConfig.top_k_row_pieces must be None .*, True or False, got 1"):
        KernelConfig(top_k_row_pieces=1)


def test_top_k_rows_split_by_default_only_past_two_thousand_padded_lanes():
    # measured on an H100: 1,320 key blocks (84,480 tokens) faster as one array, 2,640 (168,960 tokens) as pieces
    assert KernelConfig().top_k_row_pieces is None
    assert [pallas_topk.splits_rows(num) for num in (1320, 2048, 2049, 2640)] == [False, False, True, True]
    assert pallas_topk.splits_rows(1320, True) and not pallas_topk.splits_rows(2640, False)


def test_top_k_row_pieces_cover_each_row_in_powers_of_two():
    assert pallas_topk.row_pieces(100) == (128,)
    assert pallas_topk.row_pieces(1320) == (1024, 256, 128)
    assert pallas_topk.row_pieces(2640) == (2048, 512, 128)
    assert pallas_topk.row_pieces(1920) == (2048,)  # 1,024 + 512 + 512 merged twice, not 1,024 + 1,024
    for num in (1, 129, 1000, 1320, 1920, 2640, 3968, 4095, 5000, 8191):
        pieces = pallas_topk.row_pieces(num)
        assert len(pieces) <= pallas_topk.MAX_PIECES and len(set(pieces)) == len(pieces)
        assert all(piece & (piece - 1) == 0 and piece >= pallas_topk.MIN_PIECE for piece in pieces)
        assert num <= sum(pieces) < num + max(pallas_topk.MIN_PIECE, pieces[-1])


@pytest.mark.parametrize("split_rows", [False, True], ids=["one_row_array", "row_pieces"])
@pytest.mark.parametrize("case", range(10))
def test_pallas_top_k_kernel_matches_lax_top_k_in_interpret_mode(case, split_rows):
    scores, k = list(_top_k_cases())[case]
    _check_top_k(scores, k, interpret=True, split_rows=split_rows)


@pytest.mark.parametrize("split_rows", [False, True], ids=["one_row_array", "row_pieces"])
def test_pallas_top_k_kernel_lowers_for_cuda(split_rows):
    # Pallas' Triton lowering of the GPU path (masked scatter stores, the radix loop) runs on the CPU for an abstract
    # H100 (newer JAX asks which GPU it lowers for); the interpreter cases above check what it computes
    scores = jnp.zeros((2, 4, 1320), jnp.float32)
    assert "bsa_top_k" in lowered_for_cuda(lambda s: pallas_topk.top_k_indices(s, 82, split_rows=split_rows), scores)


@pytest.mark.gpu
def test_pallas_top_k_kernel_matches_lax_top_k_on_gpu():
    for mk, k in ((1320, 82), (2640, 165), (5000, 300)):
        scores = jax.random.normal(jax.random.key(mk), (4, 96, mk))
        for x in (scores, jnp.round(scores * 4) / 4):
            for split_rows in (False, True):
                _check_top_k(x, k, interpret=False, split_rows=split_rows)
