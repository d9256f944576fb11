"""Device-memory budgets: what lives on the device and what streams from host memory, decided before loading.

    sizes       parse_size('24GiB'), format_size
    footprint   weights and activation estimates of the DiT, text encoder and VAE from their configs
    workloads   a run's stages (DiT calls, VAE passes, prompts) read off the task planners' plans
    plan        Budget, Placement, MemoryPlan, plan_memory (and MemoryBudgetError, its refusal)
    run         plan_run_memory (the CLI's), pipeline_memory_plan (from_pretrained's)
    streaming   StreamedDiT: the DiT's blocks' weights in pinned host memory, copied one block ahead
    apply       a plan applied to a pipeline's models (where each loads, the DiT's mode, the VAE's tiles, notes)
    device      the device's memory, memory kinds, the allocator's peak
    peaks       the peak device memory by the end of each stage, for the run's summary

Names are resolved on first use (PEP 562), so importing one part does not import them all.
"""

import importlib

_EXPORTS = {
    "parse_size": "sizes",
    "format_size": "sizes",
    "Budget": "plan",
    "MemoryBudgetError": "plan",
    "MemoryPlan": "plan",
    "Models": "plan",
    "Placement": "plan",
    "budget_for": "plan",
    "forced_plan": "plan",
    "plan_memory": "plan",
    "plan_run_memory": "run",
    "pipeline_memory_plan": "run",
    "StreamedDiT": "streaming",
    "device_memory": "device",
    "PeakLog": "peaks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
