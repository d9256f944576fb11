"""`python -m longcat_jax.generate`: every LongCat-Video task from one command.

    python -m longcat_jax.generate                                   # built-in tiny model, t2v, CPU, < 1 minute
    python -m longcat_jax.generate --model-path LongCat-Video --prompt "..." --distill --refine
    python -m longcat_jax.generate --model-path LongCat-Video --task i2v --image cat.png --prompt "..."
    python -m longcat_jax.generate --model-path LongCat-Video --task refine --refine-from out.mp4 \\
        --bsa-config configs/bsa/config_720p_fast.json

Everything the run needs is checked before a model is loaded (sizes, frame counts, input files, BSA chunk shapes
against the token grid, checkpoint parts), so a mistake costs seconds, not a model load. `--bsa-config` applies to
the refinement stage when the run has one (stage 1 then follows the checkpoint's config.json, BSA off in the
released model), else to the generation. The output is written atomically; the run ends with a summary of the
time per stage, seconds per denoising step and peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kernels import BSAParams
from longcat_jax.bsa_config import BSAConfig, load_bsa_config
from longcat_jax.errors import InputError, LongCatError
from longcat_jax.pipelines.buckets import check_side_multiple, round_num_frames
from longcat_jax.pipelines.continuation import (
    generate_continuation,
    generate_long_video,
    join_continuation,
    plan_continuation,
)
from longcat_jax.pipelines.guidance import uses_guidance
from longcat_jax.pipelines.pipeline import (
    DISTILL_LORA,
    REFINE_LORA,
    TINY_DEFAULTS,
    LongCatPipeline,
    PipelineDefaults,
    builtin_bsa,
    check_checkpoint,
    checkpoint_bsa,
    parse_lora_arg,
)
from longcat_jax.pipelines.refine import generate_refine, plan_refine, refine_long_video
from longcat_jax.pipelines.t2v import generate_i2v, generate_t2v, plan_i2v, plan_t2v
from longcat_jax.pipelines.stats import RunStats
from longcat_jax.sharding import initialize_distributed, make_mesh, shard_pipeline
from longcat_jax.video_io import OUTPUT_FORMATS, read_image, read_video, save_video, subsample_to_fps

logger = logging.getLogger("longcat_jax.generate")

TASKS = ("t2v", "i2v", "continuation", "long", "refine")
DEFAULT_PROMPT = "A cat walks slowly across a sunny kitchen floor and stops to look at the camera."
GENERATION_FPS = 15.0
REFINED_FPS = 2 * GENERATION_FPS  # refinement doubles the frames
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m longcat_jax.generate",
        description="Generate a video with LongCat-Video (JAX). Without --model-path: a tiny built-in model with "
        "random weights, to check the installation.",
    )
    add = parser.add_argument
    add("--model-path", type=Path, help="checkpoint folder (original download or `python -m convert` output)")
    add("--task", choices=TASKS, help="default t2v (refine when --refine-from is given)")
    add("--prompt", help="default: a built-in example prompt (empty for --task refine)")
    add("--negative-prompt", default=None, help="used when guidance > 1 (default: empty)")
    add("--image", type=Path, help="i2v: the first frame; refine: an image condition")
    add("--video", type=Path, help="continuation: the video to continue; refine: a condition video")
    add("--height", type=int, help="t2v/long: multiple of 16 (default 480; tiny 128); refine: multiple of 64")
    add("--width", type=int, help="t2v/long: multiple of 16 (default 832; tiny 208); refine: multiple of 64")
    add("--num-frames", type=int, help="1 + 4k (default 93; tiny 13); other counts are rounded down")
    add("--num-cond-frames", type=int, help="continuation/long: condition frames, 1 + 4k (default 13; tiny 5)")
    add("--num-inference-steps", type=int, help="default 50 (16 with --distill; tiny 4)")
    add("--refine-inference-steps", type=int, help="schedule of the refinement, started at t=0.5 (default 50)")
    add("--guidance-scale", type=float, help="default 4.0 (1.0 with --distill)")
    add("--seed", type=int, default=42)
    add("--resolution", choices=("480p", "720p"), default="480p", help="i2v/continuation/long bucket table (long: of its continuation segments)")
    add("--bsa-config", type=Path, help="JSON BSA config, e.g. configs/bsa/config_720p_balanced.json")
    add("--lora", action="append", default=[], metavar="PATH[:MULTIPLIER]", help="extra LoRA, repeatable")
    add("--distill", action="store_true", help="cfg_step_lora, 16 steps, guidance 1")
    add("--refine", action="store_true", help="refine the result to 720p (stage 2)")
    add("--refine-from", type=Path, metavar="VIDEO", help="refine this stage-1 video (task refine)")
    add("--spatial-refine-only", action="store_true", help="refine without doubling the frame count")
    add("--num-segments", type=int, default=1, help="long: continuation segments after the first clip")
    add("--output-path", type=Path, help="default outputs/longcat_<task>.<format>")
    add("--output-format", choices=OUTPUT_FORMATS, default="mp4")
    add("--fps", type=float, help="default 15 (30 after refinement)")
    add("--dtype", choices=tuple(DTYPES), help="default bfloat16 (float32 for the built-in model)")
    add("--context-parallel", type=int, metavar="N",
        help="split each video's tokens over N devices (default: all visible devices; 1: off)")
    add("--fsdp", action="store_true", help="with several devices: store the DiT and text encoder split over them")
    return parser


@dataclasses.dataclass
class RunPlan:
    """A validated run: what to read, which stages, with which BSA, sizes already checked."""

    task: str
    prompt: str
    refine: bool
    defaults: PipelineDefaults
    generation_bsa: BSAConfig
    refine_bsa: BSAConfig
    image: np.ndarray | None
    video: np.ndarray | None  # continuation input at 15 fps, or the refine condition video
    video_30fps: np.ndarray | None  # continuation input at 30 fps (condition of its refinement)
    stage1: np.ndarray | None  # --refine-from frames
    num_frames: int  # rounded to 1 + 4k
    output_path: Path


def plan_run(args: argparse.Namespace) -> RunPlan:
    """Every check that needs no model: task and flags, input files, sizes, frames, BSA chunks, checkpoint parts."""
    task = args.task or ("refine" if args.refine_from else "t2v")
    make_mesh(args.context_parallel)  # refuses a device count that does not fit, before any model is loaded
    if task == "refine" and args.refine_from is None:
        raise InputError("--task refine needs --refine-from VIDEO (the stage-1 video to refine)")
    if args.refine_from is not None and task != "refine":
        raise InputError(f"--refine-from refines an existing video; drop --task {task} or use --refine instead")
    if args.refine and task == "refine":
        raise InputError("--refine runs stage 2 after a generation task; --task refine is stage 2 alone")
    refine = args.refine or task == "refine"
    # Inputs a task does not read would be ignored without a word; refuse them instead.
    for flag, value, readers in (("--image", args.image, ("i2v", "refine")),
                                 ("--video", args.video, ("continuation", "refine"))):
        if value is not None and task not in readers:
            raise InputError(f"{flag} is read by --task {' or '.join(readers)}, not by --task {task}")
    if args.num_segments < 0:
        raise InputError(f"--num-segments must be 0 or more, got {args.num_segments}")
    # 0 would otherwise fall back to the default without a word (the defaults are filled in with `or`)
    for flag, value in (("--height", args.height), ("--width", args.width), ("--num-frames", args.num_frames),
                        ("--num-cond-frames", args.num_cond_frames), ("--fps", args.fps),
                        ("--num-inference-steps", args.num_inference_steps),
                        ("--refine-inference-steps", args.refine_inference_steps)):
        if value is not None and not value > 0:
            raise InputError(f"{flag} must be positive, got {value}; leave it out for the default")
    if task == "refine" and args.image is not None and args.video is not None:
        raise InputError("refinement takes one condition: --image or --video, not both")
    prompt = args.prompt if args.prompt is not None else ("" if task == "refine" else DEFAULT_PROMPT)
    if args.model_path is None:
        defaults, base_bsa = TINY_DEFAULTS, builtin_bsa()
    else:
        loras = ([DISTILL_LORA] if args.distill else []) + ([REFINE_LORA] if refine else [])
        check_checkpoint(args.model_path, loras=loras)
        defaults, base_bsa = PipelineDefaults(), checkpoint_bsa(args.model_path)
    for spec in args.lora:
        parse_lora_arg(spec)
    override = load_bsa_config(args.bsa_config) if args.bsa_config else None
    generation_bsa, refine_bsa = _stage_bsa(base_bsa, override, refine)

    image = read_image(args.image) if args.image else None
    video = video_30fps = stage1 = None
    if task == "i2v" and image is None:
        raise InputError("--task i2v needs --image PATH (the first frame)")
    if task == "continuation":
        if args.video is None:
            raise InputError("--task continuation needs --video PATH (the video to continue)")
        raw, fps = read_video(args.video)
        video, video_30fps = subsample_to_fps(raw, fps, GENERATION_FPS), subsample_to_fps(raw, fps, REFINED_FPS)
    elif task == "refine":
        stage1 = _stage1_video(args.refine_from)
        if args.video is not None:  # condition frames at the refined frame rate
            raw, fps = read_video(args.video)
            video = subsample_to_fps(raw, fps, GENERATION_FPS if args.spatial_refine_only else REFINED_FPS)

    frames = round_num_frames(args.num_frames or defaults.num_frames)
    cond_frames = args.num_cond_frames or defaults.num_cond_frames
    height, width = args.height or defaults.height, args.width or defaults.width
    stage1_size, stage1_frames = (height, width), frames
    if task in ("t2v", "long"):
        stage1_frames = plan_t2v(height, width, frames, generation_bsa).num_frames
        if task == "long":
            plan_continuation((height, width), stage1_frames, frames, cond_frames, generation_bsa, defaults,
                              args.resolution)
    elif task == "i2v":
        plan = plan_i2v(image.shape[:2], frames, generation_bsa, defaults, args.resolution)
        stage1_size, stage1_frames = (plan.height, plan.width), plan.num_frames
    elif task == "continuation":
        plan = plan_continuation(video.shape[1:3], len(video), frames, cond_frames, generation_bsa, defaults,
                                 args.resolution)
        stage1_size, stage1_frames = (plan.height, plan.width), plan.num_frames
    if refine:
        _plan_refinement(args, task, refine_bsa, defaults, stage1_size, stage1_frames, stage1, image, video,
                         video_30fps, cond_frames)
    output = args.output_path or Path("outputs") / f"longcat_{task}{'_refined' if args.refine else ''}"
    if args.output_path is None and args.output_format != "frames":
        output = output.with_suffix(f".{args.output_format}")
    return RunPlan(task, prompt, refine, defaults, generation_bsa, refine_bsa, image, video, video_30fps, stage1,
                   frames, output)


def _stage_bsa(base: BSAConfig, override: BSAConfig | None, refine: bool) -> tuple[BSAConfig, BSAConfig]:
    """(generation BSA, refinement BSA): the --bsa-config goes to the refinement when there is one."""
    merge = (lambda cfg: cfg) if override is None else (lambda cfg: _merged(cfg, override))
    if not refine:
        return merge(base), base
    refine_bsa = BSAConfig(True, base.params or BSAParams()) if override is None else merge(base)
    if override is not None and not override.enable_bsa:
        logger.warning("--bsa-config turns BSA off: the refinement runs with dense attention")
    return base, refine_bsa


def _merged(base: BSAConfig, override: BSAConfig) -> BSAConfig:
    return BSAConfig(override.enable_bsa, override.params or base.params)


def _stage1_video(path) -> np.ndarray:
    """A video to refine, at the 15 fps of LongCat's first stage (every n-th frame of a faster one)."""
    raw, fps = read_video(path)
    if fps < 0.75 * GENERATION_FPS:
        logger.warning("refinement takes %g fps input (LongCat's first stage); %s is %g fps, so the output plays "
                       "faster than the input; --fps sets the frame rate written", GENERATION_FPS, path, fps)
    return subsample_to_fps(raw, fps, GENERATION_FPS)


def _plan_refinement(args, task, bsa, defaults, stage1_size, stage1_frames, stage1, image, video, video_30fps,
                     cond_frames) -> None:
    size = None
    if task == "refine":
        stage1_size, stage1_frames = stage1.shape[1:3], len(stage1)
        if args.height or args.width:
            size = (args.height or stage1_size[0], args.width or stage1_size[1])
            check_side_multiple(*size, 64)
    doubling = 1 if args.spatial_refine_only else 2
    if task == "long":
        window_cond = cond_frames * doubling
        plan_refine(stage1_size, stage1_frames, bsa, defaults, spatial_only=args.spatial_refine_only)
        plan_refine(stage1_size, stage1_frames, bsa, defaults, num_cond_frames=window_cond,
                    spatial_only=args.spatial_refine_only)
        return
    num_cond = 0
    if task == "i2v" or (task == "refine" and image is not None):
        num_cond = 1
    elif task == "continuation":
        num_cond = cond_frames * doubling
        if len(video_30fps if doubling == 2 else video) < num_cond:
            raise InputError(f"the input video is too short to condition the refinement on {num_cond} frames")
    elif task == "refine" and video is not None:
        num_cond = min(len(video), (args.num_cond_frames or defaults.num_cond_frames) * doubling)
    plan_refine(stage1_size, stage1_frames, bsa, defaults, num_cond_frames=num_cond,
                spatial_only=args.spatial_refine_only, size=size)


def run(args: argparse.Namespace, plan: RunPlan) -> tuple[np.ndarray, float, RunStats]:
    """Loads the models and runs the planned stages; returns (frames, fps, stats)."""
    stats = RunStats()
    dtype = DTYPES[args.dtype] if args.dtype else (jnp.float32 if args.model_path is None else jnp.bfloat16)
    with stats.stage("load models"):
        if args.model_path is None:
            pipe = LongCatPipeline.builtin(dtype=dtype, loras=args.lora)
        else:
            pipe = LongCatPipeline.from_pretrained(args.model_path, dtype=dtype, loras=args.lora)
        shard_pipeline(pipe, make_mesh(args.context_parallel), fsdp=args.fsdp)
    pipe.stats = stats
    _encode_prompts(args, plan, pipe)
    common = dict(num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                  distill=args.distill, seed=args.seed, bsa=plan.generation_bsa)
    task, fps = plan.task, GENERATION_FPS
    if task == "t2v":
        frames = generate_t2v(pipe, plan.prompt, negative_prompt=args.negative_prompt, height=args.height,
                              width=args.width, num_frames=plan.num_frames, **common).frames
    elif task == "i2v":
        frames = generate_i2v(pipe, plan.image, plan.prompt, negative_prompt=args.negative_prompt,
                              num_frames=plan.num_frames, resolution=args.resolution, **common).frames
    elif task == "continuation":
        frames = generate_continuation(pipe, plan.video, plan.prompt, negative_prompt=args.negative_prompt,
                                       num_frames=plan.num_frames, num_cond_frames=args.num_cond_frames,
                                       resolution=args.resolution, **common).frames
    elif task == "long":
        frames = generate_long_video(pipe, plan.prompt, num_segments=args.num_segments,
                                     negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                                     num_frames=plan.num_frames, num_cond_frames=args.num_cond_frames,
                                     resolution=args.resolution, **common).frames
    else:
        frames = plan.stage1
    if plan.refine:
        frames, fps = _refine(args, plan, pipe, frames)
    elif task == "continuation":
        frames = join_continuation(plan.video, frames, args.num_cond_frames or pipe.defaults.num_cond_frames)
    return frames, args.fps or fps, stats


def _encode_prompts(args, plan: RunPlan, pipe: LongCatPipeline) -> None:
    """Encodes every prompt the stages will use, then frees the text encoder's memory for the DiT."""
    if plan.task != "refine":
        default_guidance = 1.0 if args.distill else plan.defaults.guidance_scale
        guided = uses_guidance(args.guidance_scale if args.guidance_scale is not None else default_guidance)
        pipe.encode_text(plan.prompt, (args.negative_prompt or "") if guided else None)
    if plan.refine:
        pipe.encode_text("" if plan.task == "long" else plan.prompt)
    pipe.release_text_encoder()


def _refine(args, plan: RunPlan, pipe: LongCatPipeline, stage1: np.ndarray) -> tuple[np.ndarray, float]:
    options = dict(spatial_only=args.spatial_refine_only, num_inference_steps=args.refine_inference_steps,
                   seed=args.seed + 1000, bsa=plan.refine_bsa)
    doubling = 1 if args.spatial_refine_only else 2
    cond_frames = args.num_cond_frames or pipe.defaults.num_cond_frames
    if plan.task == "long":
        result = refine_long_video(pipe, stage1, "", num_frames=plan.num_frames, num_cond_frames=cond_frames,
                                   **options)
        return result.frames, result.fps
    if plan.task == "continuation":
        source = plan.video_30fps if doubling == 2 else plan.video
        result = generate_refine(pipe, stage1, plan.prompt, cond_video=source,
                                 num_cond_frames=cond_frames * doubling, **options)
        return join_continuation(source, result.frames, cond_frames * doubling), result.fps
    size = (args.height, args.width) if plan.task == "refine" and (args.height or args.width) else None
    if size is not None:
        size = (size[0] or stage1.shape[1], size[1] or stage1.shape[2])
    cond_video, num_cond = None, 0
    if plan.task == "refine" and plan.video is not None:
        cond_video = plan.video
        num_cond = min(len(cond_video), cond_frames * doubling)
    result = generate_refine(pipe, stage1, plan.prompt, image=plan.image, cond_video=cond_video,
                             num_cond_frames=num_cond, size=size, **options)
    return result.frames, result.fps


def _setup_logging() -> None:
    """INFO to stderr with times. Libraries may have set up the root logger already (absl does, on import of
    orbax): its plain console handlers get our format rather than a second handler."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(formatter)
    root.setLevel(logging.INFO)
    logging.getLogger("jax").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    args = build_parser().parse_args(argv)
    if os.environ.get("LONGCAT_COORDINATOR"):
        initialize_distributed()  # one process per host; before anything else touches JAX
    start = time.perf_counter()
    try:
        plan = plan_run(args)
        frames, fps, stats = run(args, plan)
        if jax.process_index() != 0:
            return 0  # with several hosts, process 0 writes the video
        with stats.stage("write output"):
            path = save_video(plan.output_path, frames, fps, args.output_format)
    except LongCatError as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; no output was written")
        return 130
    logger.info("Wrote %s (%d frames, %dx%d, %g fps)", path, len(frames), frames.shape[2], frames.shape[1], fps)
    print(stats.summary(), file=sys.stderr)
    logger.info("Done in %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
