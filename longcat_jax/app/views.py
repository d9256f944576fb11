"""What the page shows of the engine, as plain values (no Gradio here): the queue table, a job's progress line,
gallery captions, a result's settings, the size choices of the model and the header.

Everything here is read off the job (its request and checked plan), not off the provenance file, so the page
shows the same whatever writes that file.
"""

from __future__ import annotations

import time

from kernels import BSAParams
from longcat_jax.app.engine import Engine
from longcat_jax.app.jobs import Job, JobState
from longcat_jax.app.models import LoadSetting
from longcat_jax.models.dit.lora import parse_lora_spec
from longcat_jax.pipelines.buckets import bucket_table
from longcat_jax.pipelines.geometry import bucket_for
from longcat_jax.pipelines.long_video import LongVideoPlan, WindowedRefinePlan
from longcat_jax.pipelines.options import Sampling
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
    """The gallery caption of a result: task, size (width x height, as players show it), frames and the prompt's
    start."""
    frames, height, width = job.plan.stages.output_shape
    prompt = job.plan.setup.prompt
    short = prompt if len(prompt) <= 40 else prompt[:39] + "…"
    return f"{job.task} {width}x{height} {frames}f: {short}"


def settings_table(job: Job) -> str:
    """A result's settings as a Markdown table: task, prompts, seed, each stage's size, frames, steps, guidance and
    BSA, the precision and the LoRAs (the provenance file holds them all, and more)."""
    request, setup, stages = job.request, job.plan.setup, job.plan.stages
    rows = [("task", job.task), ("prompt", setup.prompt or "(empty)")]
    if setup.refinement is not None and setup.refine_prompt != setup.prompt:
        rows.append(("refinement prompt", setup.refine_prompt or "(empty)"))
    sampling = _generation_sampling(stages.generation)
    if sampling is not None:
        negative = sampling.negative_prompt
        rows.append(("negative prompt", "unused (guidance 1)" if negative is None else negative or "(empty)"))
    rows.append(("seed", str(request.seed)))
    rows += _stage_rows("generation", stages.generation) + _stage_rows("refinement", stages.refinement)
    frames, height, width = stages.output_shape
    rows.append(("output", f"{height}x{width} (HxW), {frames} frames"))
    rows.append(("precision", LoadSetting.of(job.plan).describe()))
    loras = [parse_lora_spec(spec) for spec in request.lora]
    rows.append(("LoRAs", ", ".join(f"{path.name} x{multiplier:g}" for path, multiplier in loras) or "none"))
    cells = "\n".join(f"| {name} | {_cell(value)} |" for name, value in rows)
    return f"| setting | value |\n|---|---|\n{cells}"


def _generation_sampling(plan) -> Sampling | None:
    """The sampling of a generation stage (a long video's first clip's; None: no generation stage)."""
    if isinstance(plan, LongVideoPlan):
        plan = plan.first
    return getattr(plan, "sampling", None)


def _stage_rows(name: str, plan) -> list[tuple[str, str]]:
    """One row per stage plan of the task registry's (None: the task has no such stage)."""
    if plan is None:
        return []
    if isinstance(plan, LongVideoPlan):
        first_seed = plan.first.seed + 1  # each continuation's seed follows the last one's (`run_long_video`)
        seeds = f"seeds {first_seed}-{first_seed + plan.num_segments - 1}" if plan.num_segments > 1 else f"seed {first_seed}"
        rows = [(f"{name}: first clip", _describe_stage(plan.first))]
        if plan.num_segments:
            rows.append((f"{name}: {plan.num_segments} continuations", _describe_stage(plan.segment, seeds)))
        return rows
    if isinstance(plan, WindowedRefinePlan):
        return [(name, f"{_describe_stage(plan.first)}; windows of {plan.window} frames, overlap {plan.overlap}")]
    return [(name, _describe_stage(plan))]


def _describe_stage(plan, seed: str | None = None) -> str:
    """A generation, continuation or refinement plan in one line: size, frames, steps, guidance, BSA, seed (or
    `seed`, the text that replaces it)."""
    parts = [f"{plan.height}x{plan.width} (HxW)", f"{plan.num_frames} frames"]
    if getattr(plan, "num_cond_frames", 0):
        parts[-1] += f" ({plan.num_cond_frames} condition)"
    sampling = getattr(plan, "sampling", None)
    if sampling is None:  # the refinement: refinement LoRA, no guidance, from t = t_thresh
        parts += [f"{plan.num_inference_steps} steps from t = {plan.t_thresh:g}", "no guidance"]
    else:
        parts += [f"{sampling.num_inference_steps} steps" + (" (distilled)" if sampling.distill else ""),
                  f"guidance {sampling.guidance_scale:g}"]
    parts += [f"BSA {_describe_bsa(plan.bsa)}", seed or f"seed {plan.seed}"]
    return ", ".join(parts)


def _describe_bsa(bsa: BSAParams | None) -> str:
    if bsa is None:
        return "off"
    rules = [f"sparsity {bsa.sparsity:g}" if bsa.sparsity is not None else None,
             f"CDF threshold {bsa.cdf_threshold:g}" if bsa.cdf_threshold is not None else None]
    shapes = ["x".join(map(str, shape)) for shape in (bsa.chunk_3d_shape_q, bsa.chunk_3d_shape_k)]
    return f"on ({', '.join(rule for rule in rules if rule)}; chunks q {shapes[0]}, k {shapes[1]})"


def _cell(text: str) -> str:
    """Text in a Markdown table cell: one line, its pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


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
