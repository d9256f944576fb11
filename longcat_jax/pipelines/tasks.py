"""The task registry: one table of LongCat-Video's tasks, and a CLI request planned and run through it.

Each task names the input flags it reads and needs, its defaults, and its plan and run functions (in its module):
`plan` checks everything that needs no model and returns the stages' plans; `run` runs them on a loaded pipeline.
`plan_run` makes the checks every task shares from the table (flags a task does not read, missing inputs, numbers,
checkpoint parts, LoRA files, the `--bsa-config` file and its `--bsa-sparsity`/`--bsa-cdf-threshold` overrides)
before calling the task's `plan`, so a mistake costs seconds, not a model load; `run_plan` loads the models and runs
it. A batch (`longcat_jax.batch`) plans its items with one `plan_context` and runs them on one pipeline
(`load_pipeline`, `encode_prompts`); `stage_plans` names each denoising stage of a plan (the provenance records them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from longcat_jax.bsa_config import bsa_overrides, describe_overrides, read_bsa_config
from longcat_jax.checkpoint.hub import resolve_model_path
from longcat_jax.checkpoint.layout import DISTILL_LORA, REFINE_LORA, check_checkpoint, dit_folder
from longcat_jax.checkpoint.safetensors import check_checkpoint_shards
from longcat_jax.errors import InputError
from longcat_jax.memory.plan import MemoryPlan
from longcat_jax.memory.run import check_budget_flags, plan_run_memory
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.lora import parse_lora_spec
from longcat_jax.output_path import check_output_path, check_output_space, human_bytes
from longcat_jax.pipelines import continuation, i2v, long_video, refine, t2v
from longcat_jax.pipelines.bsa import STAGE_DEFAULT, BSAOverride, BSARequest
from longcat_jax.pipelines.options import GeneratedVideo, GenerationOptions, PlanContext, RefineOptions, Sampling
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.request import (
    REFINE_SEED_OFFSET,
    RunRequest,
    RunSetup,
    TaskStages,
    check_request_numbers,
    flag_name,
    read_inputs,
)
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.presets import RELEASED_DEFAULTS, TINY_DEFAULTS, TINY_DIT_CONFIG
from longcat_jax.quantization import check_quantize_supported
from longcat_jax.sharding import make_mesh, shard_pipeline

DEFAULT_PROMPT = "A cat walks slowly across a sunny kitchen floor and stops to look at the camera."
logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
INPUT_FLAGS = {"image": "--image", "video": "--video", "refine_from": "--refine-from"}  # RunRequest field -> flag


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the CLI (`--task NAME`).

    reads: the input fields (`INPUT_FLAGS`) it reads; requires: those it cannot run without, each with the words
    that say what it is; one_of: inputs of which at most one may be given; generates: whether it makes a video
    (False: it refines a given one, so `--refine` does not apply); default_prompt: when --prompt is not given;
    refine_prompt: the refinement's prompt (None: the run's prompt).
    """

    name: str
    reads: tuple[str, ...]
    requires: Mapping[str, str]
    plan: Callable[[RunSetup], TaskStages]
    run: Callable[[LongCatPipeline, RunSetup, TaskStages], GeneratedVideo]
    one_of: tuple[str, ...] = ()
    generates: bool = True
    default_prompt: str = DEFAULT_PROMPT
    refine_prompt: str | None = None


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("t2v", reads=(), requires={}, plan=t2v.plan_task, run=t2v.run_task),
        Task("i2v", reads=("image",), requires={"image": "PATH (the first frame)"}, plan=i2v.plan_task, run=i2v.run_task),
        Task("continuation", reads=("video",), requires={"video": "PATH (the video to continue)"},
             plan=continuation.plan_task, run=continuation.run_task),
        Task("long", reads=(), requires={}, plan=long_video.plan_task, run=long_video.run_task, refine_prompt=""),
        Task("refine", reads=("refine_from", "image", "video"), requires={"refine_from": "VIDEO (the stage-1 video to refine)"},
             plan=refine.plan_task, run=refine.run_task, one_of=("image", "video"), generates=False, default_prompt=""),
    )
}


GENERATING = tuple(name for name, task in TASKS.items() if task.generates)
# The settings of a stage and the tasks that read them (a refinement stage's own: `REFINE_SETTINGS`). Given to another
# task they would change nothing; `_check_flags` warns of them, and the app's form leaves them out (`setting_applies`).
SETTING_READERS: dict[str, tuple[str, ...]] = {
    "height": ("t2v", "long", "refine"),
    "width": ("t2v", "long", "refine"),
    "num_frames": ("t2v", "i2v", "continuation", "long"),
    "num_cond_frames": ("continuation", "long", "refine"),
    "num_inference_steps": GENERATING,
    "guidance_scale": GENERATING,
    "negative_prompt": GENERATING,
    "distill": GENERATING,
    "resolution": ("i2v", "continuation", "long"),
    "num_segments": ("long",),
    "segment_prompts": ("long",),
    "output_size": ("i2v", "continuation"),
}
# read where a refinement stage runs (the sizes too: a --from-json replay with --no-refine keeps its sidecar's)
REFINE_SETTINGS = ("refine_inference_steps", "spatial_refine_only", "refine_height", "refine_width")
_SETTING_HINTS = {
    ("height", "i2v"): "; it takes the bucket of --resolution nearest its input's aspect ratio",
    ("num_inference_steps", "refine"): "; the refinement's steps: --refine-inference-steps",
    ("guidance_scale", "refine"): "; the refinement runs without guidance",
    ("negative_prompt", "refine"): "; the refinement runs without guidance",
    ("distill", "refine"): "; the refinement has its own LoRA and schedule (--refine-inference-steps)",
    ("num_frames", "refine"): "; it refines every frame of --refine-from",
}
_REQUEST_DEFAULTS = {field.name: field.default for field in dataclasses.fields(RunRequest)}


def setting_applies(field: str, task: Task, refine: bool) -> bool:
    """Whether `task` (with `refine`: followed by a refinement stage) reads the RunRequest setting `field`; fields
    outside `SETTING_READERS` and `REFINE_SETTINGS` (inputs, prompts, output, precision, ...) are not settings."""
    if field in REFINE_SETTINGS:
        return refine or not task.generates
    return task.name in SETTING_READERS.get(field, (task.name,))


def _warn_of_unread_settings(request: RunRequest, task: Task) -> None:
    """Warns, naming the tasks that read it, of each setting given (not its default) that this run ignores. A
    warning, not a refusal: shared flags (a shell alias, a `--prompts` run's flags over items of several tasks) are
    meant for the tasks that read them."""
    for field in (*SETTING_READERS, *REFINE_SETTINGS):
        if getattr(request, field) == _REQUEST_DEFAULTS[field] or setting_applies(field, task, request.refine):
            continue
        flag = flag_name(field)
        if field in REFINE_SETTINGS:
            logger.warning("%s is a setting of the refinement stage, which this run does not have (add --refine): "
                           "ignored", flag)
            continue
        side = "height" if field == "width" else field
        hint = _SETTING_HINTS.get((side, "i2v" if task.name == "continuation" else task.name), "")
        logger.warning("%s is read by --task %s, not by --task %s%s: ignored", flag,
                       " or ".join(SETTING_READERS[field]), task.name, hint)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A checked run: the task, its setup, the stages its planner made, and where the video goes."""

    task: Task
    setup: RunSetup
    stages: TaskStages
    output_path: Path
    memory: MemoryPlan | None = None  # where each model runs, within --max-device-memory or the device


def task_of(request: RunRequest) -> Task:
    """--task, or refine when --refine-from is given, else t2v."""
    return TASKS[request.task or ("refine" if request.refine_from is not None else "t2v")]


def plan_run(request: RunRequest, *, context: PlanContext | None = None) -> RunPlan:
    """Every check that needs no model: flags against the task table, numbers, the output path, device count, LoRA
    files, the BSA config and its overrides, the input files, then the checkpoint (a hub id is downloaded or found in
    the hub cache here, after the cheap checks, and replaced by its local folder) and its parts, then the task's own
    plan (sizes, frames, BSA chunks) and the output's size against memory and free space.

    context: the `plan_context` of this request's checkpoint, made already (a batch plans its items with one); the
    request's model_path must then be the resolved folder it was made from."""
    task = task_of(request)
    _check_flags(request, task)
    output = check_output_path(_output_path(request, task), request.output_format)  # before any download or load
    # the device mesh (a device count that does not fit is refused) and the budget flags, before a hub download
    check_budget_flags(request.max_device_memory, request.context_parallel, request.fsdp)
    check_quantize_supported(request.quantize)  # FP8 compute on a GPU without it: refused, naming int8
    logger.info("DiT quantization: %s", request.quantize)
    refines = request.refine or not task.generates
    for spec in request.lora:
        parse_lora_spec(spec)
    generation, refinement = _stage_options(request, refines)
    inputs = read_inputs(request)
    if context is None:
        request, context = plan_context(request)
    prompt = request.prompt if request.prompt is not None else task.default_prompt
    setup = RunSetup(request, prompt, task.refine_prompt if task.refine_prompt is not None else prompt,
                     inputs, context, generation, refinement)
    stages = task.plan(setup)
    plan = RunPlan(task, setup, stages, output)
    _check_overrides_apply(plan)
    at_input_size = request.output_size == "input" and setting_applies("output_size", task, refines)
    _check_output_size(output, request.output_format, stages.output_shape, at_input_size)
    return dataclasses.replace(plan, memory=plan_run_memory(request, stages, context, checkpoint_loras(request)))


def check_shared_settings(request: RunRequest) -> None:
    """The checks of `plan_run` on what every item of a batch shares (the device count, the quantization, the LoRA
    files, the BSA config and its overrides), so that a batch refuses such a mistake once, for the whole file."""
    check_budget_flags(request.max_device_memory, request.context_parallel)  # the device mesh too
    check_quantize_supported(request.quantize)
    for spec in request.lora:
        parse_lora_spec(spec)
    if request.bsa_config is not None:
        read_bsa_config(request.bsa_config)
    if overrides := _bsa_override_values(request):
        bsa_overrides(overrides)


def plan_context(request: RunRequest) -> tuple[RunRequest, PlanContext]:
    """The request with its model_path resolved (a hub id downloaded or found in the hub cache, replaced by its local
    folder) and what its tasks plan with: the checkpoint's parts checked, its `dit/config.json` read (once per run)."""
    if request.model_path is not None:
        request = dataclasses.replace(request, model_path=resolve_model_path(request.model_path))
    return request, _plan_context(request)


def stage_plans(plan: RunPlan) -> list[tuple[str, object]]:
    """(stage name, as the BSA log names it; its checked plan) of each denoising stage of the run, in order. A long
    video gives its first clip and the plan every segment follows; its refinement, the first window's plan."""
    found: list[tuple[str, object]] = []
    pending = [plan.stages.generation, plan.stages.refinement]
    while pending:
        part = pending.pop(0)
        if isinstance(part, long_video.LongVideoPlan):
            pending[:0] = [part.first, part.segment]
        elif isinstance(part, long_video.WindowedRefinePlan):
            pending.insert(0, part.first)
        elif isinstance(part, t2v.GenerationPlan):
            found.append(("i2v" if plan.task.name == "i2v" else "t2v", part))
        elif isinstance(part, continuation.ContinuationPlan):
            found.append(("continuation", part))
        elif isinstance(part, refine.RefinePlan):
            found.append(("refinement", part))
    return found


def run_plan(plan: RunPlan) -> tuple[np.ndarray, float, RunStats]:
    """Loads the models and runs the planned stages; returns (frames, fps, stats)."""
    stats = RunStats()
    pipe = load_pipeline(plan, stats)
    encode_prompts(pipe, [plan])
    video = plan.task.run(pipe, plan.setup, plan.stages)
    return video.frames, plan.setup.request.fps or video.fps, stats


def load_pipeline(plan: RunPlan, stats: RunStats) -> LongCatPipeline:
    """The models of a checked plan (its checkpoint, dtype, quantization, LoRAs, memory plan and devices), loaded as
    the `load models` stage of `stats`, which becomes the pipeline's."""
    request, setup = plan.setup.request, plan.setup
    stats.notes.append(f"DiT quantization: {request.quantize}")
    with stats.stage("load models"):
        if request.model_path is None:
            pipe = LongCatPipeline.builtin(dtype=run_dtype(request), loras=request.lora, quantize=request.quantize,
                                           memory_plan=plan.memory)
        else:
            pipe = LongCatPipeline.from_pretrained(request.model_path, dtype=run_dtype(request), loras=request.lora,
                                                   dit_config=setup.context.dit_config, quantize=request.quantize,
                                                   memory_plan=plan.memory)
        shard_pipeline(pipe, make_mesh(request.context_parallel), fsdp=request.fsdp)
    pipe.stats = stats
    return pipe


def run_dtype(request: RunRequest):
    """--dtype, or the default: float32 for the built-in model, bfloat16 for a checkpoint."""
    return DTYPES[request.dtype] if request.dtype else (jnp.float32 if request.model_path is None else jnp.bfloat16)


def _check_flags(request: RunRequest, task: Task) -> None:
    """The checks every task shares, read from the table."""
    if request.refine and not task.generates:
        raise InputError(f"--refine runs stage 2 after a generation task; --task {task.name} is stage 2 alone")
    # Inputs a task does not read would be ignored without a word; refuse them instead.
    for field, flag in INPUT_FLAGS.items():
        if getattr(request, field) is not None and field not in task.reads:
            readers = [name for name, other in TASKS.items() if field in other.reads]
            hint = "; --refine refines the generated video" if field == "refine_from" else ""
            raise InputError(f"{flag} is read by --task {' or '.join(readers)}, not by --task {task.name}{hint}")
    for field, what in task.requires.items():
        if getattr(request, field) is None:
            raise InputError(f"--task {task.name} needs {INPUT_FLAGS[field]} {what}")
    given = [INPUT_FLAGS[field] for field in task.one_of if getattr(request, field) is not None]
    if len(given) > 1:
        raise InputError(f"--task {task.name} takes one condition: {' or '.join(given)}, not both")
    if task.generates and request.prompt is not None and not request.prompt.strip():
        raise InputError("the prompt is empty (--prompt, or a prompts file item's 'prompt'): give the text of the video "
                         "to generate, or leave it out for the built-in example prompt")
    if any(not text.strip() for text in request.segment_prompts):
        raise InputError("a segment prompt is empty (--segment-prompt, or a prompts file item's 'segment_prompts'): "
                         "give each continuation segment's text, or none to continue every segment with the first clip's prompt")
    check_request_numbers(request)
    _warn_of_unread_settings(request, task)
    if request.refine_height is not None and not task.generates and (request.height or request.width):
        raise InputError(f"--task {task.name} takes its size from --height/--width or from "
                         "--refine-height/--refine-width; give one pair")


def checkpoint_loras(request: RunRequest) -> list[str]:
    """The checkpoint's own LoRAs the run applies: cfg_step_lora with --distill where a generation stage runs
    (--task refine has none), refinement_lora where a refinement stage runs."""
    task = task_of(request)
    distills = request.distill and task.generates
    refines = request.refine or not task.generates
    return ([DISTILL_LORA] if distills else []) + ([REFINE_LORA] if refines else [])


def _plan_context(request: RunRequest) -> PlanContext:
    """The run's defaults and DiT config: the built-in model's, or the checkpoint's (its parts checked, its
    `dit/config.json` read here, once per run)."""
    if request.model_path is None:
        return PlanContext(TINY_DEFAULTS, TINY_DIT_CONFIG)
    root = check_checkpoint(request.model_path, loras=checkpoint_loras(request))
    check_checkpoint_shards(root)
    return PlanContext(RELEASED_DEFAULTS, DiTConfig.from_json(dit_folder(root) / "config.json"))


def _stage_options(request: RunRequest, refines: bool) -> tuple[GenerationOptions, RefineOptions | None]:
    """The options of the generation and refinement stages. `--bsa-config` applies to the refinement when the run
    has one (the generation then keeps the checkpoint's BSA, off in the released model), else to the generation."""
    bsa_file = read_bsa_config(request.bsa_config) if request.bsa_config is not None else STAGE_DEFAULT
    overrides = _bsa_override_values(request)
    generation = GenerationOptions(
        negative_prompt=request.negative_prompt, height=request.height, width=request.width,
        num_frames=request.num_frames, num_cond_frames=request.num_cond_frames,
        num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
        distill=request.distill, seed=request.seed, resolution=request.resolution,
        bsa=_with_overrides(STAGE_DEFAULT if refines else bsa_file, overrides),
    )
    if not refines:
        return generation, None
    size = (request.refine_height, request.refine_width) if request.refine_height is not None else None
    refinement = RefineOptions(num_inference_steps=request.refine_inference_steps,
                               spatial_only=request.spatial_refine_only, seed=request.seed + REFINE_SEED_OFFSET,
                               size=size, bsa=_with_overrides(bsa_file, overrides))
    return generation, refinement


def _bsa_override_values(request: RunRequest) -> dict[str, float | str]:
    """{bsa_params key: value} of --bsa-sparsity and --bsa-cdf-threshold, those given."""
    given = {"sparsity": request.bsa_sparsity, "cdf_threshold": request.bsa_cdf_threshold}
    return {key: value for key, value in given.items() if value is not None}


def _with_overrides(base: BSARequest, overrides: dict[str, float | str]) -> BSARequest:
    """`base` with the command line's BSA overrides, checked (none given: `base` itself)."""
    if not overrides:
        return base
    return BSAOverride(base, bsa_overrides(overrides), describe_overrides(overrides))


def _check_overrides_apply(plan: RunPlan) -> None:
    """Refuses --bsa-sparsity / --bsa-cdf-threshold where no stage of the run runs BSA: they would change nothing,
    and a sparsity sweep would make the same video again and again."""
    overrides = _bsa_override_values(plan.setup.request)
    if overrides and all(stage.bsa is None for _, stage in stage_plans(plan)):
        flags = describe_overrides(overrides)
        raise InputError(
            f"{flags} changes the BSA of the stages that run it, and every stage of this run attends densely (the "
            f"'BSA off' or 'BSA skipped' lines above say why); turn BSA on with --bsa-config NAME (balanced, quality, "
            f"fast, adaptive, long_video) or a checkpoint whose dit/config.json has enable_bsa true, or leave {flags} out"
        )


def _output_path(request: RunRequest, task: Task) -> Path:
    """--output-path, or outputs/longcat_<task>[_refined].<format>."""
    if request.output_path is not None:
        return request.output_path
    output = Path("outputs") / f"longcat_{task.name}{'_refined' if request.refine else ''}"
    return output if request.output_format == "frames" else output.with_suffix(f".{request.output_format}")


def _check_output_size(path: Path, output_format: str, shape: tuple[int, int, int], at_input_size: bool) -> None:
    """The video of (frames, height, width) `shape`, checked before the run: its frames fit in this machine's
    memory (they are held there until written) and its file fits in the free space where it goes. `at_input_size`:
    the size is the input image's or video's (`--output-size input`), which the hint names."""
    frames, height, width = shape
    smaller = " (the input's size: --output-size generated writes the generated one)" if at_input_size else ""
    raw = 3 * frames * height * width
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if raw > memory:
        raise InputError(f"the video would be {frames} frames of {height}x{width}, {human_bytes(raw)} held in memory "
                         f"until written, and this machine has {human_bytes(memory)}; make fewer frames "
                         f"(--num-frames, --num-segments) or a smaller size{smaller}")
    check_output_space(path, output_format, frames, height, width)


def text_encodings(plan: RunPlan) -> list[tuple[str, str | None]]:
    """The (prompt, negative prompt or None) of each text encoding the plan's stages use: the generation's prompt and
    each continuation segment's (--segment-prompt), with the negative prompt; the refinement's, without."""
    setup = plan.setup
    calls = []
    if plan.task.generates:
        negative = Sampling.resolve(setup.context.defaults, setup.generation).negative_prompt
        calls += [(prompt, negative) for prompt in (setup.prompt, *setup.request.segment_prompts)]
    if setup.refinement is not None:
        calls.append((setup.refine_prompt, None))
    return calls


def encode_prompts(pipe: LongCatPipeline, plans: Sequence[RunPlan]) -> None:
    """Encodes every prompt the plans' stages will use (`text_encodings`), then frees the text encoder's memory for
    the DiT."""
    for plan in plans:
        for prompt, negative in text_encodings(plan):
            pipe.encode_text(prompt, negative)
    pipe.release_text_encoder()
