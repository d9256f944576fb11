"""The memory plan of a CLI run, made in `plan_run` before any model loads, and of a pipeline made without one.

    plan = plan_run_memory(request, stages, context, named)  # a RunRequest, its TaskStages, PlanContext, checkpoint LoRAs
    plan = pipeline_memory_plan(root, "24GiB", dtype=jnp.bfloat16)   # from_pretrained(max_device_memory=...)

Both read only config files (and LoRA file headers); a run that cannot fit is refused here
(`plan.MemoryBudgetError`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from longcat_jax.checkpoint.layout import DISTILL_LORA, REFINE_LORA, TEXT_ENCODER, VAE, lora_path
from longcat_jax.errors import ConfigError
from longcat_jax.memory.lora_sizes import lora_device_bytes
from longcat_jax.memory.plan import Budget, MemoryPlan, Models, budget_for, plan_memory
from longcat_jax.memory.sizes import parse_size
from longcat_jax.memory.workloads import released_pipeline_work, run_work
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.models.dit.lora import parse_lora_spec
from longcat_jax.models.text_encoder.config import UMT5Config
from longcat_jax.models.vae.config import VAEConfig
from longcat_jax.presets import TINY_DIT_CONFIG, TINY_TEXT_CONFIG, TINY_VAE_CONFIG

logger = logging.getLogger(__name__)
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


def checkpoint_models(root: Path, dit_config: DiTConfig, *, dtype, quantize: str | None,
                      named_loras: Sequence[Path] = (), user_loras: Sequence[Path] = ()) -> Models:
    """What the plan needs of a checkpoint folder: its text encoder's and VAE's configs (read here) and the device
    bytes of the LoRAs the run applies, from their headers: the largest of the checkpoint's `named_loras` (each stage
    runs one: the distill LoRA in the generation, the refinement LoRA in the refinement) plus every user LoRA (in
    every stage)."""
    text = UMT5Config.from_json(root / TEXT_ENCODER)
    vae = VAEConfig.from_json(root / VAE / "config.json")
    param_bytes = np.dtype(dtype).itemsize
    named = max((lora_device_bytes(p, param_bytes) for p in named_loras), default=0)
    lora_bytes = named + sum(lora_device_bytes(p, param_bytes) for p in user_loras)
    return Models(dit_config, text, vae, dtype, dtype, dtype, quantize, lora_bytes, dit_loads_after_text=True)


def builtin_models(*, dtype, quantize: str | None, user_loras: Sequence[Path] = ()) -> Models:
    """The built-in tiny model's (its text encoder and VAE are float32; every model is made at once), with the
    device bytes of the user LoRAs from their headers (which reads them: a file that is no LoRA is refused here,
    before any model is built)."""
    lora_bytes = sum(lora_device_bytes(p, np.dtype(dtype).itemsize) for p in user_loras)
    return Models(TINY_DIT_CONFIG, TINY_TEXT_CONFIG, TINY_VAE_CONFIG, dtype, jnp.float32, jnp.float32, quantize,
                  lora_bytes, dit_loads_after_text=False)


def _device_count(context_parallel: int | None) -> int:
    from longcat_jax.sharding import make_mesh

    return make_mesh(context_parallel).size


@functools.cache  # once a process: a batch plans every item, the app every job
def _warn_fsdp_ignored() -> None:
    logger.warning("--fsdp splits the weights over the devices of a run, and this run has one (--context-parallel): "
                   "ignored")


def check_budget_flags(max_device_memory: str | None, context_parallel: int | None, fsdp: bool = False) -> int:
    """Refuses a --max-device-memory that is no size, or one given for a run split over several devices, before
    anything is downloaded or read, and warns of --fsdp on one device; returns the run's device count (its mesh made:
    a --context-parallel the devices do not fit is refused)."""
    devices = _device_count(context_parallel)
    if fsdp and devices == 1:
        _warn_fsdp_ignored()
    if max_device_memory is not None:
        parse_size(max_device_memory)
        if devices > 1:
            raise ConfigError(f"--max-device-memory plans one device; this run splits over {devices} devices "
                              "(--context-parallel); add --context-parallel 1, or leave --max-device-memory out")
    return devices


def plan_run_memory(request, stages, context, named: Sequence[str]) -> MemoryPlan:
    """The plan of a CLI run: `request` a `RunRequest` (its model_path, dtype, quantize, lora, max_device_memory,
    context_parallel and fsdp are read), `stages` its task's `TaskStages`, `context` the `PlanContext`, `named` the
    checkpoint's LoRAs it applies (`tasks.checkpoint_loras`). Logs the plan; refuses what cannot fit the budget (or
    the device without one)."""
    builtin = request.model_path is None
    dtype = DTYPES[request.dtype] if request.dtype else (jnp.float32 if builtin else jnp.bfloat16)
    user_loras = [parse_lora_spec(spec)[0] for spec in request.lora]
    if builtin:
        models = builtin_models(dtype=dtype, quantize=request.quantize, user_loras=user_loras)
    else:
        root = Path(request.model_path)
        named_loras = [p for name in named if (p := lora_path(root, name)) is not None]
        models = checkpoint_models(root, context.dit_config, dtype=dtype, quantize=request.quantize,
                                   named_loras=named_loras, user_loras=user_loras)
    guided = any(getattr(getattr(plan, "sampling", None), "guided", False)
                 for plan in _stage_plans(stages.generation))
    work = run_work(stages, prompts=2 if guided else 1, text_length=context.defaults.max_sequence_length,
                    loras=bool(request.lora))
    devices = check_budget_flags(request.max_device_memory, request.context_parallel)
    if devices > 1:  # the models are put on the mesh together, before the prompts are encoded
        models = dataclasses.replace(models, dit_loads_after_text=False)
    plan = plan_memory(work, models, budget_for(request.max_device_memory), devices=devices, fsdp=request.fsdp)
    plan.log()
    return plan


def _stage_plans(plan) -> list:
    """A generation plan and the plans inside it (a long video's first clip and segment)."""
    if plan is None:
        return []
    inner = [getattr(plan, name) for name in ("first", "segment") if hasattr(plan, name)]
    return [plan, *inner]


def pipeline_memory_plan(root: Path, max_device_memory: str | int | None, *, dit_config: DiTConfig, dtype,
                         quantize: str | None, budget: Budget | None = None,
                         user_lora_elements: int = 0) -> MemoryPlan:
    """The plan of a pipeline loaded without a run to plan for: the released pipeline's largest stages (480p t2v
    with guidance, its 720p refinement with the frames doubled, their VAE passes) within `max_device_memory`
    (None: the device's memory). Tasks of other sizes run with its placements. `user_lora_elements`: the factors'
    elements of the LoRAs the pipeline applies in every stage (loaded already), kept in the DiT's dtype."""
    models = checkpoint_models(root, dit_config, dtype=dtype, quantize=quantize,
                               named_loras=[p for name in (DISTILL_LORA, REFINE_LORA) if (p := lora_path(root, name))])
    models = dataclasses.replace(models, lora_bytes=models.lora_bytes + user_lora_elements * np.dtype(dtype).itemsize)
    bsa = dit_config.bsa_params
    plan = plan_memory(released_pipeline_work(bsa=bsa), models, budget or budget_for(max_device_memory))
    plan.log()
    return plan
