"""`benchmarks/ncu_source_summary.py` on a small Nsight Compute source page: the mix per unit and the stall hotspots."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.benchmark_scripts import ROOT, run_benchmark

# the columns the script reads, between others it does not, as `ncu --page source --csv --print-source sass` writes them
HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)",'
          '"Instructions Executed","stall_barrier","stall_long_sb","stall_mio","stall_barrier (Not Issued)"')
PAGE = "\n".join([
    '"Kernel Name","entry_mosaic_gpu_kernel",',
    HEADER,
    '"0x10","FMUL R1, R2, R3","10","2","800","0","0","10","0"',
    '"0x20","@P0 FMUL.FTZ R4, R5, R6","0","0","400","0","0","0","0"',
    '"0x30","MUFU.EX2 R7, R7","30","20","1,200","0","3","27","0"',
    '"0x40","WARPGROUP.DEPBAR.LE gsb0, 0x0","60","50","100","60","0","0","40"',
])


def test_mix_per_unit_and_hotspots(tmp_path):
    page = tmp_path / "src.csv"
    page.write_text(PAGE)
    result = run_benchmark("ncu_source_summary.py", str(page), "--units", "100", "--top", "2",
                           json_path=tmp_path / "out.json", timeout=60)
    mix = {row["opcode"]: row for row in result["opcodes"]}
    assert set(mix) == {"MUFU", "FMUL"}  # the two most executed; a predicated FMUL counts as FMUL
    assert mix["FMUL"]["per_unit"] == pytest.approx(12.0) and mix["MUFU"]["per_unit"] == pytest.approx(12.0)
    assert mix["MUFU"]["stall_share"] == pytest.approx(0.3) and mix["FMUL"]["stall_share"] == pytest.approx(0.1)
    first, second = result["hotspots"]
    assert first["address"] == "0x40" and first["stall_share"] == pytest.approx(0.6)
    assert first["reasons"] == {"barrier": 1.0}  # the not-issued column is not a reason of its own
    assert second["address"] == "0x30" and second["reasons"] == pytest.approx({"mio": 0.9, "long_sb": 0.1})


def test_a_page_without_the_source_columns_is_refused(tmp_path):
    page = tmp_path / "details.csv"
    page.write_text('"ID","Kernel Name","Metric Name"\n"0","k","Duration"\n')
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ncu_source_summary.py"), str(page)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--page source --csv --print-source sass" in done.stderr
