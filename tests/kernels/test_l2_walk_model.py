"""`benchmarks/l2_walk_model.py` on the CPU: a cache that holds every block hits on all but each block's first gather."""

from __future__ import annotations

from tests.helpers.benchmark_scripts import run_benchmark


def test_a_cache_holding_every_block_misses_each_block_once(tmp_path):
    # 2 heads of 16 blocks, lists of 8: 256 gathers of 32 blocks (every block is on some list), whatever the walk
    rows = run_benchmark("l2_walk_model.py", "--query-blocks", "16", "--sparsity", "0.5", "--heads", "2", "--sms", "3",
                         "--cache-blocks", "32", "--spread", "0,0.2", json_path=tmp_path / "rows.json", timeout=120)
    assert [(row["walk"], row["spread"]) for row in rows] == [
        ("ascending", 0.0), ("phased", 0.0), ("ascending", 0.2), ("phased", 0.2)]
    for row in rows:
        assert row["accesses"] == 256
        assert row["hit_rate"] == (256 - 32) / 256


def test_a_cache_smaller_than_a_head_misses_more(tmp_path):
    rows = run_benchmark("l2_walk_model.py", "--query-blocks", "64", "--sparsity", "0.75", "--heads", "2", "--sms", "4",
                         "--cache-blocks", "8", "--spread", "0.1", json_path=tmp_path / "rows.json", timeout=120)
    assert all(0 < row["hit_rate"] < (row["accesses"] - 128) / row["accesses"] for row in rows)
