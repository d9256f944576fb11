"""What the task functions take and give: their options, the planning context, the resolved sampling and the
generated video.

    generate_t2v(pipe, "A cat walks", GenerationOptions(distill=True, seed=42))
    generate_t2v(pipe, "A cat walks", distill=True, seed=42)        # the same: keywords name option fields
    generate_refine(pipe, frames, "A cat walks", RefineOptions(seed=42))

Options left None take the pipeline's defaults (`longcat_jax.presets`: 480x832, 93 frames, 50 steps, guidance 4
for the released checkpoint). `bsa` is the stage's block-sparse attention: `STAGE_DEFAULT` lets
`pipelines.bsa.resolve_bsa` decide, a `kernels.BSAParams` turns it on with those parameters, None turns it off.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

import numpy as np

from kernels import BSAParams
from longcat_jax.errors import InputError
from longcat_jax.models.dit.config import DiTConfig
from longcat_jax.pipelines.bsa import STAGE_DEFAULT, BSARequest, Stage, resolve_bsa
from longcat_jax.pipelines.guidance import uses_guidance
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.presets import PipelineDefaults


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """A generation task's knobs (t2v, i2v, continuation, long video); None: the pipeline's default.

    height/width: t2v and the first clip of a long video (i2v and continuation take the bucket of their input);
    num_cond_frames: continuation and long video, 1 + 4k; resolution: the bucket table of i2v and continuation
    ('480p' or '720p'); negative_prompt: used when guidance > 1 (None: the original demos' default,
    `presets.DEFAULT_NEGATIVE_PROMPT`; '' for none).
    """

    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_cond_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    distill: bool = False
    seed: int = 0
    resolution: str = "480p"
    bsa: BSARequest = STAGE_DEFAULT


@dataclasses.dataclass(frozen=True)
class RefineOptions:
    """The refinement's knobs. size: (height, width), multiples of 64, instead of the 720p bucket;
    spatial_only: keep the frame count (15 fps) instead of doubling it (30 fps); t_thresh: where the schedule
    starts (0.5: 26 of 50 steps)."""

    num_inference_steps: int | None = None
    spatial_only: bool = False
    t_thresh: float = 0.5
    seed: int = 0
    size: tuple[int, int] | None = None
    bsa: BSARequest = STAGE_DEFAULT


Options = TypeVar("Options", GenerationOptions, RefineOptions)


def with_changes(options: Options | None, kind: type[Options], changes: dict[str, Any]) -> Options:
    """`options` (None: all defaults) with the fields named in `changes` replaced; unknown names are refused."""
    known = [field.name for field in dataclasses.fields(kind)]
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise InputError(f"unknown {kind.__name__} field(s) {unknown}; the fields are {known}")
    return dataclasses.replace(options or kind(), **changes)


@dataclasses.dataclass(frozen=True)
class PlanContext:
    """What planning knows of the model without loading it: the run's defaults, the DiT's config (read once per
    run) and the BSA asked for the whole pipeline (`from_pretrained(bsa_config=...)`; `STAGE_DEFAULT`: none)."""

    defaults: PipelineDefaults
    dit_config: DiTConfig
    bsa: BSARequest = STAGE_DEFAULT

    def stage_bsa(self, stage: Stage, requested: BSARequest, latent_frames: int) -> BSAParams | None:
        """The stage's BSA: the task's `bsa` option, else the pipeline's, else the stage default (logged)."""
        request = requested if requested is not STAGE_DEFAULT else self.bsa
        return resolve_bsa(stage, self.dit_config, request, latent_frames=latent_frames)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Step count, guidance, schedule kind and negative prompt (None: unguided) of a generation stage, defaults
    filled in."""

    num_inference_steps: int
    guidance_scale: float
    distill: bool
    negative_prompt: str | None = None

    @classmethod
    def resolve(cls, defaults: PipelineDefaults, options: GenerationOptions) -> Sampling:
        """The original's defaults: 50 steps and guidance 4 with its demos' negative prompt; distilled 16 steps
        and guidance 1. A guidance scale that is not a finite number is refused (inf gives NaN latents, nan
        would quietly mean no guidance)."""
        distill = options.distill
        steps = options.num_inference_steps or (
            defaults.distill_inference_steps if distill else defaults.num_inference_steps
        )
        guidance = options.guidance_scale
        if guidance is None:
            guidance = 1.0 if distill else defaults.guidance_scale
        if not math.isfinite(guidance):
            raise InputError(f"guidance scale must be a finite number, got {guidance}; the original uses 4 (1 distilled)")
        negative = options.negative_prompt if options.negative_prompt is not None else defaults.negative_prompt
        return cls(int(steps), float(guidance), distill, negative if uses_guidance(guidance) else None)

    @property
    def guided(self) -> bool:
        """Whether the steps run both CFG branches (guidance above 1)."""
        return uses_guidance(self.guidance_scale)


@dataclasses.dataclass(frozen=True)
class GeneratedVideo:
    """A task's result: uint8 frames [F, H, W, 3], the frame rate to play them at, and, for a video of a batch
    denoised with others, the timings of its own stages with the shared ones (None: the pipeline's)."""

    frames: np.ndarray
    fps: float
    stats: RunStats | None = None
