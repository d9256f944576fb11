"""Long video: a t2v clip, then `num_segments` continuations, each conditioned on the last `num_cond_frames`
frames of the previous clip; the frames after the condition are appended each time (93 + 80 per segment by
default). Each continuation is made at the `resolution` bucket nearest the clip's aspect ratio (480p, as the
original's long-video demo) and resized to the first clip's size.

Its refinement walks the long video in windows of `num_frames` with a stride of num_frames - num_cond_frames,
each conditioned on the tail of the previous refined window, as the original long-video demo; every window runs
with the BSA the first one resolved.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from longcat_jax.errors import InputError
from longcat_jax.pipelines.continuation import ContinuationPlan, plan_continuation, run_continuation
from longcat_jax.pipelines.options import GeneratedVideo, GenerationOptions, PlanContext, RefineOptions, with_changes
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.refine import RefinePlan, plan_refine, plan_refine_window, run_refine
from longcat_jax.pipelines.request import RunSetup, TaskStages
from longcat_jax.pipelines.t2v import GenerationPlan, plan_t2v, run_t2v
from longcat_jax.video_io import resize_frames

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LongVideoPlan:
    """The first clip, the plan every continuation segment follows (its seed aside), the segment count, and each
    segment's prompt (empty: the first clip's)."""

    first: GenerationPlan
    segment: ContinuationPlan
    num_segments: int
    segment_prompts: tuple[str, ...] = ()

    def segment_prompt(self, prompt: str, segment: int) -> str:
        """The prompt of continuation `segment` (from 0), where the first clip's is `prompt`."""
        return self.segment_prompts[segment] if self.segment_prompts else prompt

    @property
    def num_frames(self) -> int:
        """Frames of the long video: the first clip, then each segment's frames after its condition."""
        return self.first.num_frames + self.num_segments * (self.segment.num_frames - self.segment.num_cond_frames)


@dataclasses.dataclass(frozen=True)
class WindowedRefinePlan:
    """The refinement of a long video: the first window's plan (its BSA and sizes serve every window), windows of
    `window` stage-1 frames overlapping by `overlap`."""

    first: RefinePlan
    window: int
    overlap: int


def plan_long_video(options: GenerationOptions, num_segments: int, context: PlanContext,
                    segment_prompts: tuple[str, ...] = ()) -> LongVideoPlan:
    """Checks the first clip and the continuations before any compute; `segment_prompts`, where given, are one a
    segment (the original's interactive video demo: a prompt per segment)."""
    if num_segments < 0:
        raise InputError(f"--num-segments must be 0 or more, got {num_segments}")
    if segment_prompts and len(segment_prompts) != num_segments:
        raise InputError(f"{len(segment_prompts)} --segment-prompt for {num_segments} segments (--num-segments): give "
                         "one a segment, or leave --num-segments out to make as many segments as prompts")
    first = plan_t2v(options, context)
    segment = plan_continuation(first.size, first.num_frames, options, context, source="the first clip's frame")
    return LongVideoPlan(first, segment, num_segments, tuple(segment_prompts))


def run_long_video(pipe: LongCatPipeline, prompt: str, plan: LongVideoPlan) -> GeneratedVideo:
    """The frames of a checked long-video plan at the first clip's size, 15 fps."""
    first = run_t2v(pipe, prompt, plan.first)
    frames = [first.frames]
    current = first.frames
    for segment in range(plan.num_segments):
        logger.info("Generating segment %d/%d", segment + 1, plan.num_segments)
        segment_plan = dataclasses.replace(plan.segment, seed=plan.first.seed + segment + 1)
        clip = run_continuation(pipe, current, plan.segment_prompt(prompt, segment), segment_plan).frames
        clip = resize_frames(clip, current.shape[1], current.shape[2], "bicubic")
        frames.append(clip[segment_plan.num_cond_frames :])
        current = clip
    return GeneratedVideo(np.concatenate(frames, axis=0), first.fps)


def generate_long_video(pipe: LongCatPipeline, prompt: str, options: GenerationOptions | None = None, *,
                        num_segments: int, segment_prompts: tuple[str, ...] = (), **changes) -> GeneratedVideo:
    """A t2v clip extended by `num_segments` continuations: num_frames + num_segments * (num_frames -
    num_cond_frames) frames at 15 fps; `segment_prompts`: one prompt a segment (default: `prompt` for all).
    Keywords replace fields of `options`."""
    options = with_changes(options, GenerationOptions, changes)
    return run_long_video(pipe, prompt, plan_long_video(options, num_segments, pipe.plan_context, segment_prompts))


def plan_windowed_refine(stage1_size: tuple[int, int], options: RefineOptions, context: PlanContext, *,
                         num_frames: int | None = None, num_cond_frames: int | None = None) -> WindowedRefinePlan:
    """Checks the windows of a long video's refinement (windows of `num_frames` stage-1 frames overlapping by
    `num_cond_frames`; None: the pipeline's defaults) before any compute."""
    window = num_frames or context.defaults.num_frames
    overlap = num_cond_frames or context.defaults.num_cond_frames
    if window <= overlap:
        raise InputError(f"refinement windows of {window} frames cannot overlap by {overlap} frames")
    first = plan_refine(stage1_size, window, options, context)
    plan = WindowedRefinePlan(first, window, overlap)
    plan_refine_window(first, window, _window_cond_frames(plan), first.seed)  # the later windows fit too
    return plan


def run_windowed_refine(pipe: LongCatPipeline, stage1: np.ndarray, prompt: str, plan: WindowedRefinePlan) -> GeneratedVideo:
    """Refines a long stage-1 video window by window (see the module docstring)."""
    refined: list[np.ndarray] = []
    previous: np.ndarray | None = None
    cond_frames = 0
    starts = range(0, max(len(stage1) - plan.overlap, 1), plan.window - plan.overlap)
    fps = 15.0
    for index, start in enumerate(starts):
        logger.info("Refining window %d/%d", index + 1, len(starts))
        frames = stage1[start : start + plan.window]
        window_plan = plan_refine_window(plan.first, len(frames), cond_frames, plan.first.seed + index)
        result = run_refine(pipe, frames, prompt, window_plan, cond_video=previous)
        refined.append(result.frames[cond_frames:])
        previous, fps = result.frames, result.fps
        cond_frames = _window_cond_frames(plan)
    return GeneratedVideo(np.concatenate(refined, axis=0), fps)


def refine_long_video(pipe: LongCatPipeline, stage1: np.ndarray, prompt: str = "", options: RefineOptions | None = None,
                      *, num_frames: int | None = None, num_cond_frames: int | None = None, **changes) -> GeneratedVideo:
    """Refines a long stage-1 video (uint8 [F, H, W, 3]) window by window (see the module docstring). Keywords
    replace fields of `options`."""
    plan = plan_windowed_refine(stage1.shape[1:3], with_changes(options, RefineOptions, changes), pipe.plan_context,
                                num_frames=num_frames, num_cond_frames=num_cond_frames)
    return run_windowed_refine(pipe, stage1, prompt, plan)


def _window_cond_frames(plan: WindowedRefinePlan) -> int:
    """Condition frames of every window after the first: the overlap, at the refined frame rate."""
    return plan.overlap if plan.first.spatial_only else 2 * plan.overlap


def plan_task(setup: RunSetup) -> TaskStages:
    """`--task long`: the clip at --height/--width and --num-segments continuations (or one a --segment-prompt, each
    with its prompt); with --refine, windows of
    --num-frames, refined with an empty prompt (the task table's; as the original's long-video demo)."""
    request = setup.request
    num_segments = request.num_segments if request.num_segments is not None else len(request.segment_prompts) or 1
    generation = plan_long_video(setup.generation, num_segments, setup.context, request.segment_prompts)
    shape = (generation.num_frames, *generation.first.size)
    refinement = None
    if setup.refinement is not None:
        refinement = plan_windowed_refine(generation.first.size, setup.refinement, setup.context,
                                          num_frames=generation.first.num_frames, num_cond_frames=setup.num_cond_frames)
        # the windows tile the stage-1 video: each adds its refined frames after the overlap
        shape = (generation.num_frames * setup.refine_frame_factor, refinement.first.height, refinement.first.width)
    return TaskStages(generation, refinement, shape)


def run_task(pipe: LongCatPipeline, setup: RunSetup, stages: TaskStages) -> GeneratedVideo:
    video = run_long_video(pipe, setup.prompt, stages.generation)
    if stages.refinement is None:
        return video
    return run_windowed_refine(pipe, video.frames, setup.refine_prompt, stages.refinement)
