"""Parity group `scheduler`: our sigma and timestep tables against the original's, for every fixture case.

Cases come from `pipeline_cases.json` (`scheduler.cases`: name, steps, use_distill; `scheduler.config`: the
scheduler config the original ran with); expected tables are `<name>.sigmas` / `<name>.timesteps` in
`pipeline_cases.safetensors`. Tables are float32 whatever `--dtype` says: they are built on the host.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from longcat_jax.metrics import rel_l2
from longcat_jax.parity.report import CaseResult, verdict
from longcat_jax.pipelines.scheduler import SchedulerConfig, make_schedule

TOLERANCE = 1e-6


def run(fixtures: Path, dtype: str) -> list[CaseResult]:
    """One result per (case, table); a missing fixture file gives a single FAIL naming it."""
    fixtures = Path(fixtures)
    cases_json = fixtures / "pipeline_cases.json"
    tensors_file = fixtures / "pipeline_cases.safetensors"
    for needed in (cases_json, tensors_file):
        if not needed.is_file():
            return [CaseResult("scheduler", float("nan"), TOLERANCE, "FAIL", note=f"{needed} not found")]
    spec = json.loads(cases_json.read_text())["scheduler"]
    expected = load_file(str(tensors_file))
    config = SchedulerConfig.from_dict(spec.get("config", {}), source=f"{cases_json}: scheduler.config")
    results = []
    for case in spec["cases"]:
        schedule = make_schedule(case["steps"], distill=case["use_distill"], config=config)
        for table in ("sigmas", "timesteps"):
            name = f"{case['name']}.{table}"
            results.append(_compare(name, np.asarray(getattr(schedule, table)), expected.get(name)))
    return results


def _compare(name: str, got: np.ndarray, want: np.ndarray | None) -> CaseResult:
    if want is None:
        return CaseResult(name, float("nan"), TOLERANCE, "FAIL", note="expected table missing from the fixtures")
    if got.shape != want.shape:
        return CaseResult(name, float("nan"), TOLERANCE, "FAIL", note=f"shape {got.shape} != expected {want.shape}")
    error = rel_l2(got, want)
    return CaseResult(name, error, TOLERANCE, verdict(error, TOLERANCE))
