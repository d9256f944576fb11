"""The warm pipeline's text encoder between jobs: kept on the device, or released after each job's encoding and loaded
again for the next new prompt, as each request's memory plan allows.

A request's memory plan (`memory.plan`) places the text encoder on the device "released before the DiT loads" (or
on the CPU): its DiT and VAE stages do not count the encoder's weights (10.6 GiB for the real UMT5-XXL in bfloat16).
The CLI releases it after encoding; the app keeps its pipeline for the next request, and:
- keeps the encoder on the device when the plan has room for it: its weights (the plan's own figure,
  `memory.footprint.text_encoder_weights`) beside the plan's largest stage after the text encoding fit the bytes the
  plan may use. No reload then, and the job's notes say what it counted. An encoder on the CPU (no device memory)
  and a request without a plan keep it too, with nothing to count;
- otherwise encodes the job's prompts first and releases the encoder, as the CLI does, and the next job whose prompts
  are not all cached loads it again (`LongCatPipeline.reload_text_encoder`: the text encoder alone, where it loaded
  first, or onto the device mesh of `--context-parallel`; a few seconds at the real size).
The embeddings of the last job's prompts stay cached on the pipeline (a few MiB), so the same prompts again need no
encoder; a job with another prompt drops them first, so the cache never holds more than one job's prompts.
Not counted: a checkpoint's plan encodes the prompts before its DiT loads, while the warm app loads the encoder again
beside the DiT it holds (a streamed DiT: its ends and a block or two; a resident one: all its weights).
"""

from __future__ import annotations

import logging

from longcat_jax.memory.footprint import text_encoder_weights
from longcat_jax.memory.plan import MemoryPlan, Placement
from longcat_jax.memory.sizes import format_size
from longcat_jax.models.text_encoder.prompt import is_released
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.pipelines.tasks import RunPlan, text_encodings
from longcat_jax.sharding.mesh import CONTEXT_AXIS
from longcat_jax.sharding.params import place_module

logger = logging.getLogger(__name__)

TEXT_STAGE = "text encoding"  # the plan's name for its text-encoding stage (`memory.plan`)
RELEASED = "released after encoding (the plan needs its memory for the DiT); it loads again for the next prompt"


def room_for_text_encoder(memory: MemoryPlan | None, loaded: Placement | None,
                          pipe: LongCatPipeline) -> tuple[bool, str | None]:
    """Whether the text encoder may stay after encoding for a request of plan `memory`, served by models of
    placement `loaded`, and what was counted (None: nothing to count): its weights beside the plan's largest stage
    after the text encoding, against the bytes the plan may use."""
    if memory is None or (loaded is not None and loaded.text_on_cpu) or memory.placement.text_on_cpu:
        return True, None
    encoder = pipe.text_encoder
    weights = text_encoder_weights(encoder.config, encoder.dtype)
    after = max((stage for stage in memory.stages if stage.name != TEXT_STAGE), key=lambda s: s.device_bytes,
                default=None)
    largest = after.device_bytes if after is not None else 0
    stage = f" ({after.name})" if after is not None else ""
    counted = (f"its {format_size(weights)} beside the {format_size(largest)} of the plan's largest stage after the "
               f"text encoding{stage}")
    usable = format_size(memory.budget.usable)
    if largest + weights <= memory.budget.usable:
        return True, f"{counted} fit the {usable} planned"
    return False, f"{counted} would pass the {usable} planned"


class WarmTextEncoder:
    """The prompts cached on the warm pipeline, and whether its text encoder stays (see the module docstring)."""

    def __init__(self):
        self._cached: frozenset[str] = frozenset()  # prompts whose embeddings the pipeline holds

    def forget(self) -> None:
        """A new pipeline: it holds no prompts."""
        self._cached = frozenset()

    def prepare(self, pipe: LongCatPipeline, plan: RunPlan, loaded: Placement | None, stats: RunStats) -> None:
        """Before the job's task runs: drops the last job's prompts unless this job asks the same, loads the encoder
        again when it was released and a prompt is new, encodes the job's prompts, and releases the encoder when the
        plan needs its memory (with a note in the job's summary)."""
        calls = text_encodings(plan)
        prompts = frozenset(text for call in calls for text in call if text is not None)
        if not prompts <= self._cached:
            pipe.clear_text_cache()
            self._cached = frozenset()
            if is_released(pipe.text_encoder):
                logger.info("Loading the text encoder again for this job's prompts (released after an earlier job)")
                pipe.reload_text_encoder()
                if pipe.mesh is not None:  # context parallel: onto the mesh, as `shard_pipeline` put the first
                    place_module(pipe.text_encoder, pipe.mesh, CONTEXT_AXIS, fsdp=plan.setup.request.fsdp)
                stats.notes.append("text encoder: loaded again for this job's new prompts")
        elif is_released(pipe.text_encoder):
            logger.info("This job's prompts were encoded for the previous job: their embeddings are reused")
            stats.notes.append("text encoder: stays released; this job's prompts were encoded for the previous job")
        keeps, counted = room_for_text_encoder(plan.memory, loaded, pipe)
        for prompt, negative in calls:
            pipe.encode_text(prompt, negative)
        self._cached |= prompts
        if is_released(pipe.text_encoder):
            return
        if keeps:
            if counted is not None:
                logger.info("Text encoder kept on the device between jobs: %s", counted)
                stats.notes.append(f"text encoder: kept on the device between jobs ({counted})")
            return
        logger.info("Text encoder %s: %s", RELEASED, counted)
        pipe.release_text_encoder()
        stats.notes.append(f"text encoder: {RELEASED} ({counted})")
