"""`benchmarks/fp8_stale_max.py` on small grids: a held maximum keeps the scaled weights inside e4m3, costs little
accuracy, and leaves fewer warp steps that rescale the higher its threshold."""

from __future__ import annotations

from tests.helpers.benchmark_scripts import run_benchmark


def test_the_stale_maximum_study_runs_on_small_grids(tmp_path):
    rows = run_benchmark("fp8_stale_max.py", "--grid", "8x8x16", "--heads", "2", "--sparsities", "0.875",
                         "--share-grid", "8x16x32", "--share-heads", "1", "--share-query-blocks", "8",
                         json_path=tmp_path / "rows.json", timeout=600)
    accuracy = [row for row in rows if "error" in row]
    shares = [row for row in rows if "error" not in row]
    assert {row["inputs"] for row in accuracy} == {"random", "structured", "structured, V blocks spread"}
    for row in accuracy:
        assert row["fits_e4m3"] and 1e-3 < row["error"] < 0.1
        if row["tau"] == 0:  # the running maximum: a row's largest weight is exactly 2^e (its block's V fold is 1)
            assert row["largest_weight"] <= 2.0 ** row["exponent"]
    for inputs in ("random", "structured", "structured, V blocks spread"):
        by_setting = {(row["exponent"], row["tau"]): row["error"] for row in accuracy if row["inputs"] == inputs}
        assert max(by_setting.values()) < 1.1 * by_setting[8, 0.0]  # within 10% of the kernel's rounding today
    for inputs in ("random", "structured"):
        for sparsity in (0.875, 0.9375, 0.96875):
            by_tau = [row["warp_rescales"] for row in sorted(shares, key=lambda row: row["tau"])
                      if row["inputs"] == inputs and row["sparsity"] == sparsity]
            assert len(by_tau) == 4 and 0 < by_tau[-1] <= by_tau[0] <= 1
            assert all(later <= earlier for earlier, later in zip(by_tau, by_tau[1:]))
