"""What the page shows of the engine, as plain values (no Gradio here): the queue table, a job's progress line,
gallery captions, the size choices of the model and the header."""

from __future__ import annotations

import json
import time

from longcat_jax.app.engine import Engine
from longcat_jax.app.jobs import Job, JobState
from longcat_jax.pipelines.buckets import bucket_table
from longcat_jax.pipelines.geometry import bucket_for
from longcat_jax.presets import PipelineDefaults

QUEUE_HEADERS = ["job", "task", "state", "queue", "progress", "seconds"]
QUEUE_ROWS = 20


def queue_rows(engine: Engine) -> list[list[str]]:
    """The newest jobs, one row each: id, task, state, queue position, progress (or the error), seconds run."""
    now = time.time()
    rows = []
    for job in engine.jobs()[:QUEUE_ROWS]:
        position = engine.position(job.id)
        where = {None: "", 0: "running"}.get(position, f"#{position}")
        rows.append([job.id, job.task, job.state.value, where, progress_text(job), f"{job.elapsed(now):.1f}"])
    return rows


def progress_text(job: Job) -> str:
    """The stage and denoising step of a running job; the stages done; the error of a failed one."""
    if job.state is JobState.FAILED:
        return job.error or "failed"
    if job.state is JobState.RUNNING:
        if job.cancel_requested.is_set():
            return "cancelling at the next step"
        return job.stage.describe() if job.stage else "starting"
    if job.state is JobState.DONE:
        return f"{len(job.stages_done)} stages"
    return ""


def status_line(job: Job, engine: Engine) -> str:
    """One sentence on a job of this page: where it is, or how it ended."""
    position = engine.position(job.id)
    if job.state is JobState.QUEUED:
        ahead = position - 1
        return f"Job {job.id} is queued at position {position} ({ahead} ahead of it)."
    if job.state is JobState.RUNNING:
        return f"Job {job.id} is running: {progress_text(job)}."
    if job.state is JobState.DONE:
        return f"Job {job.id} is done in {job.elapsed():.1f} s."
    if job.state is JobState.CANCELLED:
        return f"Job {job.id} was cancelled; it left no output."
    return f"Job {job.id} failed: {job.error}"


def caption(job: Job) -> str:
    """The gallery caption of a result: task, size, frames and the prompt's start."""
    output = provenance_of(job)["output"]
    prompt = job.plan.setup.prompt
    short = prompt if len(prompt) <= 40 else prompt[:39] + "…"
    return f"{job.task} {output['width']}x{output['height']} {output['frames']}f: {short}"


def provenance_of(job: Job) -> dict:
    """The sidecar of a done job."""
    return json.loads(job.sidecar.read_text())


def size_choices(defaults: PipelineDefaults, resolution: str) -> list[tuple[int, int]]:
    """The (height, width) buckets of a resolution's table at the model's scale (the built-in model works at 1/4),
    in the table's order, each once."""
    sizes = []
    for height, width in bucket_table(resolution).values():
        size = bucket_for(height, width, defaults, resolution)
        if size not in sizes:
            sizes.append(size)
    return sizes


def header(engine: Engine) -> str:
    """The page's first lines: which model is loaded, in which weight format."""
    models = engine.models
    model = f"`{models.model_path}`" if models.model_path else (
        "the built-in model: **random weights, its videos are noise**; start with `--model-path` for real videos")
    loaded = models.setting.describe() if models.setting else "not loaded yet"
    return f"# LongCat-Video (JAX)\nModel: {model}. Weights: {loaded}. One job runs at a time; the others queue."
