"""A run as the CLI asks for it: the flags, typed (`RunRequest`); the input files, read (`RunInputs`); and what
every task's planner is given (`RunSetup`) and returns (`TaskStages`).

`RunRequest` holds one field per flag of `python -m longcat_jax.generate`, under the flag's name; None means the
task's or the model's default. `check_request_numbers` refuses the numbers that cannot mean anything (zero sizes,
non-finite guidance or frame rates, sizes past their bound, seeds out of range); `longcat_jax.pipelines.tasks`
checks the rest against the task table and plans the run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from longcat_jax.errors import InputError
from longcat_jax.pipelines.options import GenerationOptions, PlanContext, RefineOptions
from longcat_jax.video_io import MAX_FPS, frames_at_fps, read_image, read_video

logger = logging.getLogger(__name__)

GENERATION_FPS = 15.0  # LongCat's generation rate: inputs are taken at it
REFINED_FPS = 2 * GENERATION_FPS  # refinement doubles the frames
REFINE_SEED_OFFSET = 1000  # the refinement's noise seed is the run's seed + this
# --output-size: the input image's or video's size (the original's demos resize to it, bicubic), or the generated one
OUTPUT_SIZES = ("input", "generated")

# Plain bounds: past them a run is a typo, not a request (the device-memory estimate refuses what does not fit).
MAX_SIDE = 4096  # pixels; the released model works at 480p and 720p
MAX_NUM_FRAMES = 1 + 4 * 256  # one clip, 68 s at 15 fps; longer videos: --task long
MAX_INFERENCE_STEPS = 1000  # the schedule's training timesteps
MAX_NUM_SEGMENTS = 1000  # long video: 80,000 new frames at the defaults, 89 minutes at 15 fps
SEED_HEADROOM = 2**16  # later stages derive seeds up to this above --seed (refinement, segments, windows)
MAX_SEED = 2**63 - 1 - SEED_HEADROOM  # a signed 64-bit integer (key_from_seed counts every bit of it)
POSITIVE_FIELDS = ("height", "width", "num_frames", "num_cond_frames", "fps", "num_inference_steps",
                   "refine_inference_steps", "refine_height", "refine_width")
BOUNDS = {"height": MAX_SIDE, "width": MAX_SIDE, "refine_height": MAX_SIDE, "refine_width": MAX_SIDE,
          "num_frames": MAX_NUM_FRAMES, "num_cond_frames": MAX_NUM_FRAMES, "num_inference_steps": MAX_INFERENCE_STEPS,
          "refine_inference_steps": MAX_INFERENCE_STEPS, "num_segments": MAX_NUM_SEGMENTS, "fps": MAX_FPS}


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """Every flag of the CLI (see `longcat_jax.generate`); None: the default of the task or the model."""

    model_path: Path | None = None
    task: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    image: Path | None = None
    video: Path | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_cond_frames: int | None = None
    num_inference_steps: int | None = None
    refine_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 42
    resolution: str = "480p"
    bsa_config: Path | None = None
    bsa_sparsity: float | None | str = None  # replaces bsa_params.sparsity of stages that run BSA; "none": null
    bsa_cdf_threshold: float | None | str = None  # likewise bsa_params.cdf_threshold
    lora: tuple[str, ...] = ()
    distill: bool = False
    refine: bool = False
    refine_from: Path | None = None
    spatial_refine_only: bool = False
    refine_height: int | None = None
    refine_width: int | None = None
    num_segments: int | None = None  # long: None is one a --segment-prompt, else 1
    segment_prompts: tuple[str, ...] = ()  # long: each continuation segment's prompt (default: --prompt)
    output_path: Path | None = None
    output_format: str = "mp4"
    output_size: str = "input"
    fps: float | None = None
    dtype: str | None = None
    quantize: str = "none"
    context_parallel: int | None = None
    fsdp: bool = False
    max_device_memory: str | None = None  # a budget like 24GiB for the memory plan (`longcat_jax.memory`)
    compilation_cache: str | None = None  # read by the CLI before planning (`longcat_jax.compilation_cache`)
    record_calibration: Path | None = None  # read by the CLI: the run's DiT calls saved for GPTQ
    prompts: Path | None = None  # a file of items, each run as a request of its own (`longcat_jax.batch`)
    batch_size: int = 1  # with --prompts: t2v items of one shape denoised together, up to this many
    from_json: Path | None = None  # a sidecar whose request is run again (`longcat_jax.provenance`)


def check_request_numbers(request: RunRequest) -> None:
    """Refuses, naming the flag and the fix, numbers that cannot mean anything: a guidance scale or frame rate that
    is not finite (inf guidance gives NaN latents, a black video; nan would quietly mean no guidance), zero or
    negative sizes and counts (0 would otherwise fall back to the default without a word, as None does), values
    past `BOUNDS`, and seeds out of range. A guidance scale below 1 (no guidance) is allowed, with a warning, and so
    is a negative prompt in an unguided run, which ignores it."""
    for field in ("guidance_scale", "fps"):
        value = getattr(request, field)
        if value is not None and not math.isfinite(value):
            raise InputError(f"{flag_name(field)} must be a finite number, got {value}; leave it out for the default")
    if request.guidance_scale is not None and request.guidance_scale < 1:
        logger.warning("--guidance-scale %g is below 1, which turns guidance off (it runs above 1; the default is 4, "
                       "1 with --distill)", request.guidance_scale)
    unguided = request.guidance_scale <= 1 if request.guidance_scale is not None else request.distill
    if request.negative_prompt and unguided:
        logger.warning("--negative-prompt is read only by guided runs (--guidance-scale above 1), and this one is "
                       "unguided (%s): ignored", "--distill's default guidance 1" if request.guidance_scale is None
                       else f"--guidance-scale {request.guidance_scale:g}")
    if request.num_segments is not None and request.num_segments < 0:
        raise InputError(f"--num-segments must be 0 or more, got {request.num_segments}")
    for field in POSITIVE_FIELDS:
        value = getattr(request, field)
        if value is not None and not value > 0:
            raise InputError(f"{flag_name(field)} must be positive, got {value}; leave it out for the default")
    for field, bound in BOUNDS.items():
        value = getattr(request, field)
        if value is not None and value > bound:
            raise InputError(f"{flag_name(field)} {value} is past its bound of {bound}; use at most {bound}"
                             + ("; longer videos: --task long --num-segments N" if field == "num_frames" else ""))
    if not 0 <= request.seed <= MAX_SEED:
        raise InputError(f"--seed must be in 0..{MAX_SEED} (a 64-bit seed, less room for the seeds later stages "
                         f"derive from it), got {request.seed}")
    if (request.refine_height is None) != (request.refine_width is None):
        raise InputError("give --refine-height and --refine-width together (multiples of 64), or neither for the "
                         "720p bucket nearest the stage-1 aspect ratio")


def flag_name(field: str) -> str:
    """The CLI flag of the RunRequest field `field` (`--segment-prompt` gives `segment_prompts` its items)."""
    return "--segment-prompt" if field == "segment_prompts" else "--" + field.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class RunInputs:
    """The input files of a run, read: uint8 frames [F, H, W, 3] (image [H, W, 3]); None where not given."""

    image: np.ndarray | None = None
    video: np.ndarray | None = None  # --video at 15 fps (continuation input)
    refine_video: np.ndarray | None = None  # --video at the refinement's rate (its condition frames)
    stage1: np.ndarray | None = None  # --refine-from at 15 fps


def read_inputs(request: RunRequest) -> RunInputs:
    """Reads --image, --video and --refine-from (each refused by name when missing or unreadable)."""
    image = read_image(request.image) if request.image is not None else None
    video = refine_video = stage1 = None
    if request.video is not None:
        raw, fps = read_video(request.video)
        video = frames_at_fps(raw, fps, GENERATION_FPS)
        refine_video = frames_at_fps(raw, fps, GENERATION_FPS if request.spatial_refine_only else REFINED_FPS)
    if request.refine_from is not None:
        raw, fps = read_video(request.refine_from)
        stage1 = frames_at_fps(raw, fps, GENERATION_FPS)
        if fps > 0 and len(stage1) * fps < 0.75 * GENERATION_FPS * len(raw):  # no stride or repeat brings it near 15
            logger.warning("refinement takes %g fps input (LongCat's first stage); %s is %g fps, so the output plays "
                           "faster than the input; --fps sets the frame rate written", GENERATION_FPS,
                           request.refine_from, fps)
    return RunInputs(image, video, refine_video, stage1)


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What a task's planner gets: the request, the prompts of its stages, its inputs, the planning context and the
    options of the generation and refinement stages (`refinement` None: no refinement)."""

    request: RunRequest
    prompt: str
    refine_prompt: str
    inputs: RunInputs
    context: PlanContext
    generation: GenerationOptions
    refinement: RefineOptions | None

    @property
    def num_cond_frames(self) -> int:
        """--num-cond-frames, or the model's default (13)."""
        return self.request.num_cond_frames or self.context.defaults.num_cond_frames

    @property
    def refine_frame_factor(self) -> int:
        """Refined frames per stage-1 frame: 2, or 1 with --spatial-refine-only."""
        return 1 if self.request.spatial_refine_only else 2


@dataclasses.dataclass(frozen=True)
class TaskStages:
    """A task planner's result for its runner: the generation stage's plan (None for --task refine) and the
    refinement's (None without refinement), of the types that task's module defines, and the (frames, height,
    width) of the video the run writes (the output checks size the file by it)."""

    generation: object
    refinement: object | None
    output_shape: tuple[int, int, int]
