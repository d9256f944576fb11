"""The run summary's memory lines: peaks by stage (a stage run again numbered as the timing table numbers it), the
highest against the budget, and the DiT bytes streamed per step of each DiT setting."""

import jax.numpy as jnp

from longcat_jax.memory import peaks
from longcat_jax.memory.apply import MemoryNotes
from longcat_jax.memory.plan import Budget, Placement, forced_plan
from longcat_jax.memory.run import builtin_models
from longcat_jax.memory.workloads import RunWork

GIB = 2**30


def _notes(budget_gib: float) -> MemoryNotes:
    work = RunWork((), (), prompts=0, text_length=64)
    budget = Budget(int(budget_gib * GIB), "a test", "gpu", explicit=True)
    return MemoryNotes(forced_plan(work, builtin_models(dtype=jnp.float32, quantize=None), budget,
                                   Placement(dit_streamed=True)))


def _mark(monkeypatch, notes: MemoryNotes, marks: list[tuple[str, float]]) -> None:
    for stage, gib in marks:
        monkeypatch.setattr(peaks, "peak_bytes", lambda gib=gib: int(gib * GIB))
        notes.peaks.mark(stage)


def test_stages_run_again_are_numbered_and_the_highest_peak_is_named(monkeypatch):
    notes = _notes(24)
    _mark(monkeypatch, notes, [("text encoding", 11), ("denoising", 15), ("decode", 15), ("encode", 17),
                               ("denoising", 20), ("decode", 20)])
    text = str(notes)
    assert ("peak device memory by the end of: text encoding 11.00 GiB, denoising 15.00 GiB, decode 15.00 GiB, "
            "encode 17.00 GiB, denoising #2 20.00 GiB, decode #2 20.00 GiB") in text
    assert "highest peak 20.00 GiB (by the end of denoising #2): within the budget of 24.00 GiB" in text


def test_a_peak_over_the_budget_says_so(monkeypatch):
    notes = _notes(16)
    _mark(monkeypatch, notes, [("denoising", 17)])
    assert "highest peak 17.00 GiB (by the end of denoising): OVER the budget of 16.00 GiB" in str(notes)


def test_each_dit_setting_streams_its_own_bytes_and_a_cpu_has_no_peaks(monkeypatch):
    notes = _notes(24)
    notes.streamed_bytes = 27 * GIB
    notes.streamed_bytes = 28 * GIB
    monkeypatch.setattr(peaks, "peak_bytes", lambda: None)
    notes.peaks.mark("denoising")
    text = str(notes)
    assert "DiT weights streamed per denoising step: 27.00 GiB, then 28.00 GiB (one figure per DiT setting" in text
    assert notes.streamed_bytes == 28 * GIB
    assert "peak device memory by the end of" not in text and "highest peak" not in text
