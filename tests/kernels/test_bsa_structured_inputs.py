"""The BSA benchmark's structured (video-like) inputs and its `--small` path, run as the scripts run (on the CPU).

benchmarks/ is imported by nothing (tests/test_architecture.py), so both scripts run in a subprocess and the checks
read the JSON they write: the generator's statistics (`benchmarks/bsa_inputs.py`) and the benchmark's records
(`benchmarks/bsa_attention.py --small`).
"""

from __future__ import annotations

import pytest

from tests.helpers.benchmark_scripts import run_benchmark

GRID, HEADS, HEAD_DIM = (8, 16, 16), 2, 64  # the benchmark's --small size: 2,048 tokens, 32 key blocks of 64


@pytest.fixture(scope="module")
def input_stats(tmp_path_factory) -> dict:
    grid = "x".join(str(n) for n in GRID)
    path = tmp_path_factory.mktemp("bsa_inputs") / "stats.json"
    return run_benchmark("bsa_inputs.py", "--grid", grid, "--heads", str(HEADS), "--head-dim", str(HEAD_DIM), json_path=path,
                timeout=600)


def test_structured_inputs_have_the_dits_layout(input_stats):
    """q, k, v as the DiT hands them to attention: [B, T*H*W, heads, head_dim] bf16."""
    assert input_stats["shape"] == [1, GRID[0] * GRID[1] * GRID[2], HEADS, HEAD_DIM]
    assert input_stats["dtype"] == "bfloat16"
    assert input_stats["spec"]["hidden_size"] == HEADS * HEAD_DIM


def test_neighbouring_tokens_are_correlated_and_far_ones_are_not(input_stats):
    """The smooth field: v (a linear map of the tokens) of the next token in t, h and w points the same way, of tokens
    half the grid apart not; and neighbours' attention logits exceed far pairs' (what makes block scores peaked)."""
    cosine, logit = input_stats["v_cosine"], input_stats["logit"]
    for axis in ("t+1", "h+1", "w+1"):
        assert cosine[axis] > 0.5, cosine
        assert cosine[axis] > abs(cosine["far"]) + 0.4, cosine
        assert logit[axis] > logit["far"] + 1.0, logit
    assert abs(cosine["far"]) < 0.2, cosine


def test_qk_norm_and_rope_are_applied(input_stats):
    """RMSNorm: q and k have an RMS equal to the norm's weight (RoPE, a rotation, keeps it); RoPE: every token but the
    one at position (0, 0, 0) is rotated, without changing its norm, by the same rotation for q and k (so a token's
    own logit stays)."""
    weight = input_stats["spec"]["qk_norm_weight"]
    assert input_stats["q_rms"] == pytest.approx(weight, rel=2e-2)
    assert input_stats["k_rms"] == pytest.approx(weight, rel=2e-2)
    assert input_stats["rope_change_at_origin"] == 0.0
    assert input_stats["rope_min_change_elsewhere"] > 0.05
    assert input_stats["rope_norm_change"] < 2e-2
    assert input_stats["own_logit_with_rope_minus_without"] < 0.1


def test_cdf_selection_keeps_part_of_the_blocks(input_stats):
    """The point of the inputs: block scores peaked enough that CDF selection keeps a part of the key blocks (random
    inputs keep nearly all at 0.98), more at the higher threshold."""
    kept = {threshold: values["kept"] for threshold, values in input_stats["cdf_selection"].items()}
    assert set(kept) == {"0.9", "0.98"}
    assert 0.0 < kept["0.9"] <= kept["0.98"] < 0.8, kept


def test_pair_sharing_of_neighbouring_query_blocks(input_stats):
    """How much query blocks 2m and 2m+1 share their top-k lists. Every top-k list has the same length k, so the useful
    share of a 128-row tile over both lists, k / (2k - shared), is 1 / (2 - shared_of_own): two figures computed
    separately from the same masks must satisfy it."""
    sharing = input_stats["pair_sharing"]
    assert set(sharing) == {"0.875", "0.9375", "0.96875"}
    for sparsity, values in sharing.items():
        assert 0.0 <= values["shared_of_own"] <= 1.0, (sparsity, values)
        assert values["useful_fraction"] == pytest.approx(1.0 / (2.0 - values["shared_of_own"]), rel=1e-5), sparsity


@pytest.mark.slow
def test_small_benchmark_reports_selection_on_random_and_structured_inputs(tmp_path):
    """`--small` runs the whole benchmark path in the interpreters and reports, per input kind and selection, the kept
    fraction and the error against dense attention; structured inputs give CDF selection peaked scores to work on."""
    result = run_benchmark("bsa_attention.py", "--small", "--inputs", "random,structured", "--modes", "topk 0.875,cdf 0.98",
                           "--no-top-k-row-pieces", "--key-ranges", "2", json_path=tmp_path / "small.json", timeout=900)
    records = {(r["inputs"], r["mode"]): r for r in result["records"]}
    assert set(records) == {(kind, mode) for kind in ("random", "structured") for mode in ("topk 0.875", "cdf 0.98")}
    num_k_blocks = GRID[0] * GRID[1] * GRID[2] // 64
    for record in records.values():
        assert 0.0 < record["kept_fraction"] <= 1.0
        assert record["rel_l2_vs_dense"] >= 0.0
        assert record["whole_ms"] > 0.0 and record["dense_ms"] > 0.0
    for kind in ("random", "structured"):
        assert records[kind, "topk 0.875"]["kept_fraction"] == int(0.125 * num_k_blocks) / num_k_blocks
    assert records["structured", "cdf 0.98"]["kept_fraction"] < records["random", "cdf 0.98"]["kept_fraction"] - 0.2
    assert records["structured", "topk 0.875"]["rel_l2_vs_dense"] < records["random", "topk 0.875"]["rel_l2_vs_dense"]
    assert result["structured_spec"]["hidden_size"] == HEADS * HEAD_DIM
    assert "top_k_row_pieces=False" in result["config"]  # the flag's negative form reaches the kernel settings
    assert "key_ranges=2" in result["config"]
