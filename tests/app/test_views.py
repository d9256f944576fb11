"""What the page shows of a result, read off the job's checked plan (no model runs): the settings table of each
kind of stage plan, and the gallery caption."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from longcat_jax.app.engine import AppSettings
from longcat_jax.app.jobs import Job
from longcat_jax.app.views import caption, settings_table
from longcat_jax.pipelines.tasks import plan_run
from longcat_jax.video_io import write_mp4

SETTINGS = AppSettings(model_path=None, output_dir=Path("unused"), context_parallel=1)


def planned_job(tmp_path: Path, **fields) -> Job:
    request = SETTINGS.request(output_path=tmp_path / "out.mp4", **fields)
    return Job("job", request, plan_run(request))


def rows(table: str) -> dict[str, str]:
    lines = table.splitlines()
    assert lines[:2] == ["| setting | value |", "|---|---|"]
    return dict(line.strip("| ").split(" | ", 1) for line in lines[2:])


def test_t2v_with_guidance_a_preset_and_a_lora(tmp_path, lora_file):
    job = planned_job(tmp_path, task="t2v", prompt="a | cat", negative_prompt="blur", height=64, width=64,
                      num_frames=13, num_inference_steps=2, guidance_scale=3.0, seed=7, bsa_config=Path("balanced"),
                      lora=(f"{lora_file}:0.5",), quantize="int8")
    table = rows(settings_table(job))
    assert table["task"] == "t2v" and table["prompt"] == r"a \| cat"  # a pipe in a prompt does not split the cell
    assert (table["negative prompt"], table["seed"]) == ("blur", "7")
    assert table["generation"] == ("64x64 (HxW), 13 frames, 2 steps, guidance 3, BSA on (sparsity 0.9375; chunks q "
                                   "4x4x4, k 4x4x4), seed 7")
    assert "refinement" not in table
    assert table["output"] == "64x64 (HxW), 13 frames"
    assert table["precision"] == "float32, quantization int8"
    assert table["LoRAs"] == f"{lora_file.name} x0.5"
    assert caption(job) == "t2v 64x64 13f: a | cat"


def test_distilled_t2v_refined(tmp_path):
    table = rows(settings_table(planned_job(tmp_path, task="t2v", distill=True, refine=True, seed=3)))
    assert table["negative prompt"] == "unused (guidance 1)"
    assert ", 4 steps (distilled), guidance 1, BSA off, seed 3" in table["generation"]
    assert "26 frames, 8 steps from t = 0.5, no guidance, BSA on (" in table["refinement"]  # the stage's default BSA
    assert table["refinement"].endswith("seed 1003")
    assert "refinement prompt" not in table  # the same prompt


def test_long_video_segments_and_windows(tmp_path):
    table = rows(settings_table(planned_job(tmp_path, task="long", num_segments=2, refine=True, seed=10)))
    assert table["generation: first clip"].endswith("seed 10")
    assert "13 frames (5 condition)" in table["generation: 2 continuations"]
    assert table["generation: 2 continuations"].endswith("seeds 11-12")
    assert table["refinement"].endswith("windows of 13 frames, overlap 5")
    assert table["refinement prompt"] == "(empty)"  # the long task refines with an empty prompt, as the original


def test_refine_of_an_uploaded_video(tmp_path):
    clip = write_mp4(tmp_path / "clip.mp4", np.zeros((9, 64, 64, 3), np.uint8), fps=15)
    job = planned_job(tmp_path, task="refine", refine_from=clip, refine_height=64, refine_width=128, seed=9)
    table = rows(settings_table(job))
    assert "generation" not in table and "negative prompt" not in table
    assert table["refinement"].startswith("64x128 (HxW), 18 frames, 8 steps from t = 0.5")
    assert caption(job) == "refine 128x64 18f: "


@pytest.fixture
def lora_file(tmp_path, fixtures_dir) -> Path:
    """A LoRA file for the request's checks (plan_run reads its header for the memory plan; nothing applies it
    here): the fixture DiT's, under another name."""
    path = tmp_path / "style.safetensors"
    shutil.copyfile(fixtures_dir / "lora_rank8.safetensors", path)
    return path
