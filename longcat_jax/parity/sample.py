"""Parity group `sample`: whole sampling loops (DiT + guidance + scheduler) against the original's.

The fixture folder's `dit/` is loaded exactly as a user's checkpoint would be. `pipeline_cases.json` (`sample`)
describes two loops the original ran on it from the stored start latents `sample.latents0` and text
(`sample.cond`, `sample.uncond` with their masks): `sample.t2v_cfg4_4steps` (4 plain steps, guidance 4.0 with
CFG-zero*) and `sample.i2v_4steps` (4 plain steps, no guidance, latent frame 0 a clean condition). The number of
steps and the guidance scale are read from each case name (`..._cfg<g>_<n>steps`, `..._<n>steps`); every shape
comes from the tensors. Every tensor so named is a case of its own (a fixture set may hold several loops of a
task, say `sample.t2v_cfg4_4steps` and `sample.t2v_8steps`); each task needs at least one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit import load_dit
from longcat_jax.parity.report import CaseResult, verdict
from longcat_jax.pipelines.denoise import Denoiser, TextCondition, sample
from longcat_jax.pipelines.guidance import uses_guidance
from longcat_jax.pipelines.scheduler import SchedulerConfig, make_schedule

TOLERANCES = {"float32": 1e-4, "bfloat16": 1e-2}  # bf16: the fixture README's bound for a bf16 port
CASES = ("t2v", "i2v")
_CASE_NAME = re.compile(r"sample\.(?P<task>t2v|i2v)(?:_cfg(?P<guidance>[0-9.]+))?_(?P<steps>\d+)steps")


def run(fixtures: Path, dtype: str) -> list[CaseResult]:
    """One result per sampling case found in the fixtures (by task, then name); a missing file, or a task without
    a case, is a FAIL naming it."""
    fixtures = Path(fixtures)
    tol = TOLERANCES[dtype]
    for needed in (fixtures / "pipeline_cases.json", fixtures / "pipeline_cases.safetensors", fixtures / "dit"):
        if not needed.exists():
            return [CaseResult("sample", float("nan"), tol, "FAIL", note=f"{needed} not found")]
    spec = json.loads((fixtures / "pipeline_cases.json").read_text())
    notes = spec.get("sample", {})
    tensors = load_file(str(fixtures / "pipeline_cases.safetensors"))
    cases = [(name, m) for name in sorted(tensors) if (m := _CASE_NAME.fullmatch(name))]
    cases.sort(key=lambda case: CASES.index(case[1].group("task")))  # stable: by name within a task
    missing = [task for task in CASES if not any(match.group("task") == task for _, match in cases)]
    if missing:
        return [CaseResult(f"sample.{task}", float("nan"), tol, "FAIL", note="no expected tensor") for task in missing]
    dit = load_dit(fixtures / "dit", dtype=jnp.dtype(dtype))
    denoiser = Denoiser(dit)
    scheduler = SchedulerConfig.from_dict(spec.get("scheduler", {}).get("config", {}), source="pipeline_cases.json")
    results = []
    for name, match in cases:
        task, steps, guidance = match.group("task"), int(match.group("steps")), float(match.group("guidance") or 1.0)
        got = sample_case(denoiser, tensors, task, steps, guidance, scheduler=scheduler)
        rel = rel_l2(got, tensors[name])  # nan (FAIL) on a shape mismatch
        # the JSON's note describes its task's one loop; with several loops of a task, say what this one ran
        alone = sum(other.group("task") == task for _, other in cases) == 1
        note = notes.get(task, "")[:60] if alone else f"{steps} steps, guidance {guidance:g}"
        results.append(CaseResult(name, rel, tol, verdict(rel, tol), note=note))
    return results


def sample_case(
    denoiser: Denoiser,
    tensors: dict[str, np.ndarray],
    task: str,
    steps: int,
    guidance_scale: float,
    *,
    scheduler: SchedulerConfig | None = None,
) -> np.ndarray:
    """Our sampling loop on the fixture's start latents and text: the final latents [B, C, T, H, W] float32."""
    text = TextCondition(
        jnp.asarray(tensors["sample.cond"]),
        jnp.asarray(tensors["sample.cond_mask"], jnp.int32),
        jnp.asarray(tensors["sample.uncond"]),
        jnp.asarray(tensors["sample.uncond_mask"], jnp.int32),
    )
    latents = sample(
        denoiser,
        jnp.asarray(tensors["sample.latents0"], jnp.float32),
        make_schedule(steps, config=scheduler),
        text,
        guidance_scale=guidance_scale,
        guided=uses_guidance(guidance_scale),
        num_cond_latents=1 if task == "i2v" else 0,
        desc=f"sample.{task}",
    )
    return np.asarray(latents, np.float32)
