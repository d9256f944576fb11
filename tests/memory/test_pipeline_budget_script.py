"""`benchmarks/pipeline_budget.py --small`: a checkpoint of random weights written in the download's layout, the
real CLI run from it at the smallest budget its plan accepts, and that run carrying out its plan (the text encoder
on the CPU, the DiT's weights streamed from pinned host memory at every step), read back from the CLI's log."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "pipeline_budget.py"


@pytest.mark.slow
def test_a_small_case_runs_the_cli_within_its_plan_and_reports_it(tmp_path):
    logs, videos = tmp_path / "logs", tmp_path / "videos"
    command = [sys.executable, str(SCRIPT), "--small", "--cases", "small_480p_distill",
               "--checkpoint", str(tmp_path / "checkpoint"), "--log-dir", str(logs), "--video-dir", str(videos),
               "--compilation-cache", "none", "--case-timeout", "600"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    record = json.loads((logs / "pipeline_budget.json").read_text())
    assert record["checkpoint"]["bytes"] > 0 and not record["checkpoint"]["kept"]
    (result,) = record["results"]
    assert result["status"] == "ok"
    # At the smallest budget neither the text encoder nor the DiT's weights fit on the device whole...
    assert "text encoder: on the CPU" in result["plan"]
    assert any(line.startswith("DiT weights: streamed") for line in result["plan"])
    # ...and the run did what the plan said: the encoder loaded on the CPU, the DiT into pinned host memory, its
    # blocks streamed at every step.
    applied = "\n".join(result["applied"])
    assert "the text encoder loads on cpu" in applied
    assert "pinned host memory, to be streamed" in applied and "DiT weights streamed from pinned host memory" in applied
    assert len(result["streamed_per_step"]) == 1 and result["streamed_per_step"][0] > 0
    stages = {stage["stage"]: stage for stage in result["stages"]}
    assert stages["t2v denoising"]["steps"] == 1
    assert {"load models", "text encoding", "load DiT", "decode", "total"} <= set(stages)
    assert (logs / "small_480p_distill.log").read_text().count("Summary:") == 1
    assert not list(videos.iterdir())  # each case's video is deleted after its run
    assert "| small_480p_distill |" in done.stdout


def test_an_unknown_case_is_refused_naming_the_known_ones(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--small", "--cases", "24GiB_distill_refine",
                           "--log-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "unknown case" in done.stderr and "small_480p_distill" in done.stderr
