"""`benchmarks/fp8_v_scale_fold.py` on a small grid: both roundings' errors, and the spread V blocks really spread."""

from __future__ import annotations

from tests.helpers.benchmark_scripts import run_benchmark


def test_the_fold_study_runs_on_a_small_grid(tmp_path):
    rows = run_benchmark("fp8_v_scale_fold.py", "--grid", "4x8x16", "--heads", "2", "--sparsities", "0.875",
                         json_path=tmp_path / "rows.json", timeout=600)
    by_inputs = {row["inputs"]: row for row in rows}
    assert set(by_inputs) == {"random", "structured", "structured, V blocks spread"}
    for row in rows:  # e4m3 rounding: about 1e-2 to 6e-2 from float32 (BENCHMARKS.md), either way of rounding P
        assert 1e-3 < row["unfolded"] < 0.1 and 1e-3 < row["folded"] < 0.1
    spread = by_inputs["structured, V blocks spread"]
    assert spread["smallest_fold"] < 0.1 < by_inputs["structured"]["smallest_fold"]  # blocks two decades apart
    # the fold rounds differently where the blocks' V scales differ, and not at all where they do not (the random
    # inputs' blocks share one scale: the bf16 normal sampler's tails end at 2.89)
    assert spread["folded"] != spread["unfolded"] and abs(spread["folded"] / spread["unfolded"] - 1) < 0.1
    assert by_inputs["random"]["smallest_fold"] == 1.0 and by_inputs["random"]["folded"] == by_inputs["random"]["unfolded"]
