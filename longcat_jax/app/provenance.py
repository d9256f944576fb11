"""The provenance of an app result: a sidecar `<video>.json` beside each video.

It holds what made the video: prompt, negative prompt and seed; the task and the checked plan of each stage (sizes,
frames, steps, guidance, BSA); dtype, quantization and LoRAs with their multipliers; the checkpoint; the CLI
command that runs the same request; our version and commit, the JAX version and devices; and the timings of the
summary.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from longcat_jax.models.dit.lora import parse_lora_spec
from longcat_jax.pipelines.request import RunRequest
from longcat_jax.pipelines.stats import RunStats, peak_memory_line

if TYPE_CHECKING:
    from longcat_jax.app.jobs import Job
    from longcat_jax.app.models import WarmModels

REPO_ROOT = Path(__file__).resolve().parents[2]


def provenance(job: Job, frames: np.ndarray, fps: float, stats: RunStats, models: WarmModels) -> dict[str, Any]:
    """The sidecar's fields for a finished job whose video is `frames` [F, H, W, 3] at `fps`."""
    plan, request = job.plan, job.request
    setup = plan.setup
    loras = [parse_lora_spec(spec) for spec in request.lora]
    return {
        "job": job.id,
        "created": _iso(job.created),
        "task": plan.task.name,
        "prompt": setup.prompt,
        "refine_prompt": setup.refine_prompt if setup.refinement is not None else None,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "model": str(request.model_path) if request.model_path else "built-in (random weights)",
        "dtype": models.setting.dtype,
        "quantization": request.quantize,
        "loras": [{"path": str(path), "multiplier": multiplier} for path, multiplier in loras],
        "bsa_config": to_json(request.bsa_config),
        "stages": {"generation": to_json(plan.stages.generation), "refinement": to_json(plan.stages.refinement)},
        "output": {"video": plan.output_path.name, "frames": int(frames.shape[0]), "height": int(frames.shape[1]),
                   "width": int(frames.shape[2]), "fps": fps},
        "command": cli_command(request),
        "request": to_json(request),
        "versions": versions(),
        "timings": [
            {"stage": stage.name, "seconds": round(stage.seconds, 3), "steps": len(stage.step_times),
             "seconds_per_step": None if stage.seconds_per_step is None else round(stage.seconds_per_step, 4)}
            for stage in stats.stages
        ],
        "memory": peak_memory_line(),
    }


def write_sidecar(job: Job, frames: np.ndarray, fps: float, stats: RunStats, models: WarmModels) -> Path:
    """Writes `provenance(...)` beside the job's video (`NAME.json`), atomically; returns its path."""
    path = job.plan.output_path.with_suffix(".json")
    text = json.dumps(provenance(job, frames, fps, stats, models), indent=2)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text + "\n")
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def cli_command(request: RunRequest) -> str:
    """`python -m longcat_jax.generate ...` with the flags that run `request` (those not at their default)."""
    words = ["python", "-m", "longcat_jax.generate"]
    for field in dataclasses.fields(RunRequest):
        value = getattr(request, field.name)
        if value == field.default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag)
        elif isinstance(value, tuple):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


@functools.cache
def versions() -> dict[str, Any]:
    """Our version and git commit (None outside a checkout), JAX's, the devices and Python's."""
    devices = jax.devices()
    return {
        "longcat_jax": importlib.metadata.version("longcat-jax"),
        "commit": _git_commit(),
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "python": platform.python_version(),
    }


def to_json(value: Any) -> Any:
    """Plans, options and requests as JSON values: dataclasses as objects, enums by value, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_json(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _git_commit() -> str | None:
    if not (REPO_ROOT / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
