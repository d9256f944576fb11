"""`python -m longcat_jax.generate`: every LongCat-Video task from one command.

    python -m longcat_jax.generate                                   # built-in tiny model, t2v, CPU, < 1 minute
    python -m longcat_jax.generate --model-path LongCat-Video --prompt "..." --distill --refine
    python -m longcat_jax.generate --model-path LongCat-Video --task i2v --image cat.png --prompt "..."
    python -m longcat_jax.generate --model-path LongCat-Video --task refine --refine-from out.mp4 --bsa-config fast
    python -m longcat_jax.generate --model-path meituan-longcat/LongCat-Video --prompt "..."   # a hub id
    python -m longcat_jax.generate --model-path LongCat-Video --prompts prompts.jsonl --batch-size 2
    python -m longcat_jax.generate --from-json outputs/longcat_t2v.json --output-path again.mp4

This module is the command line only: its flags become a `RunRequest`, which the task registry
(`longcat_jax.pipelines.tasks`) checks before a model is loaded (sizes, frame counts, input files, BSA chunk shapes
against the token grid, checkpoint parts), so a mistake costs seconds, not a model load, and then runs.
`--bsa-config` applies to the refinement stage when the run has one (stage 1 then follows the checkpoint's
config.json, BSA off in the released model), else to the generation; `--bsa-sparsity` and `--bsa-cdf-threshold`
replace those values of every stage that runs BSA. The output is written atomically with its provenance sidecar
`NAME.json` (`longcat_jax.provenance`), which `--from-json` runs again; the run ends with a summary of the time per
stage, seconds per denoising step and peak memory. `--prompts FILE` runs every item of a file with the models loaded
once (`longcat_jax.batch`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import jax

from longcat_jax.batch import run_batch
from longcat_jax.bsa_config import parse_override_value
from longcat_jax.cli_logging import setup_cli_logging
from longcat_jax.compilation_cache import enable_compilation_cache
from longcat_jax.errors import ConfigError, InputError, LongCatError
from longcat_jax.pipelines.buckets import RESOLUTIONS
from longcat_jax.pipelines.calibration_record import recording_dit_calls
from longcat_jax.pipelines.request import OUTPUT_SIZES, RunRequest
from longcat_jax.pipelines.tasks import DTYPES, TASKS, plan_run, run_plan
from longcat_jax.provenance import (
    differences,
    planned_record,
    read_sidecar,
    request_from_record,
    write_video_and_sidecar,
)
from longcat_jax.quantization import MODES as QUANTIZE_MODES
from longcat_jax.sharding import initialize_distributed
from longcat_jax.signals import describe, exit_status, sigterm_as_interrupt
from longcat_jax.video_io import OUTPUT_FORMATS

logger = logging.getLogger("longcat_jax.generate")


def build_parser(*, defaults: bool = True) -> argparse.ArgumentParser:
    """The CLI's flags; `defaults=False`: none has a default, so a parse holds only the flags given."""
    parser = argparse.ArgumentParser(
        prog="python -m longcat_jax.generate",
        description="Generate a video with LongCat-Video (JAX). Without --model-path: a tiny built-in model with "
        "random weights, to check the installation.",
    )

    def add(*flags: str, **options) -> None:
        parser.add_argument(*flags, **options if defaults else {**options, "default": argparse.SUPPRESS})

    add("--model-path", type=Path,
        help="checkpoint folder (original download or `python -m convert` output), or a Hugging Face hub id such as "
        "meituan-longcat/LongCat-Video (downloaded into the hub cache on first use)")
    add("--task", choices=tuple(TASKS), help="default t2v (refine when --refine-from is given)")
    add("--prompt", help="default: a built-in example prompt (empty for --task refine)")
    add("--negative-prompt", default=None,
        help="used when guidance > 1 (default: the original demos' list of artefacts to avoid; '' for none)")
    add("--image", type=Path, help="i2v: the first frame; refine: an image condition")
    add("--video", type=Path, help="continuation: the video to continue; refine: a condition video")
    add("--height", type=int, help="t2v/long: multiple of 16 (default 480; tiny 128); refine: multiple of 64")
    add("--width", type=int, help="t2v/long: multiple of 16 (default 832; tiny 208); refine: multiple of 64")
    add("--num-frames", type=int, help="1 + 4k (default 93; tiny 13); other counts become n // 4 * 4 + 1 (94 and 92 -> 93)")
    add("--num-cond-frames", type=int, help="continuation/long: condition frames, 1 + 4k (default 13; tiny 5)")
    add("--num-inference-steps", type=int,
        help="default 50 (16 with --distill; tiny 4); continuation (and long's segments) runs the schedule's steps above "
        "t=500, then 10 even steps to 0, as the original does (the sidecar's timings count the steps run)")
    add("--refine-inference-steps", type=int, help="schedule of the refinement, started at t=0.5 (default 50)")
    add("--guidance-scale", type=float, help="default 4.0 (1.0 with --distill)")
    add("--seed", type=int, default=42, help="noise seed, 0 to 2^63 - 65537 (default %(default)s)")
    add("--resolution", choices=RESOLUTIONS, default="480p",
        help="i2v/continuation/long bucket table (long: of its continuation segments)")
    add("--bsa-config", type=Path, metavar="PRESET|FILE",
        help="BSA preset (balanced, quality, fast, adaptive, long_video, 480p_no_bsa, or a file name such as "
        "config_720p_balanced.json) or a JSON BSA config file")
    add("--bsa-sparsity", type=_override_value, metavar="X|none",
        help="replace bsa_params.sparsity of every stage that runs BSA (from --bsa-config, the checkpoint's "
        "dit/config.json or the refinement's default), in [0, 1); none: no top-k rule")
    add("--bsa-cdf-threshold", type=_override_value, metavar="Y|none",
        help="replace bsa_params.cdf_threshold likewise, in (0, 1]; none: no CDF rule")
    add("--lora", action="append", default=[], metavar="PATH[:MULTIPLIER]", help="extra LoRA, repeatable")
    add("--distill", action=argparse.BooleanOptionalAction, default=False,
        help="cfg_step_lora, 16 steps, guidance 1 (--no-distill: off, e.g. over a --from-json sidecar's)")
    add("--refine", action=argparse.BooleanOptionalAction, default=False, help="refine the result to 720p (stage 2)")
    add("--refine-from", type=Path, metavar="VIDEO", help="refine this stage-1 video (task refine)")
    add("--spatial-refine-only", action=argparse.BooleanOptionalAction, default=False,
        help="refine without doubling the frame count")
    add("--refine-height", type=int, help="refinement height, multiple of 64 (default: the 720p bucket)")
    add("--refine-width", type=int, help="refinement width, multiple of 64 (default: the 720p bucket)")
    add("--num-segments", type=int,
        help="long: continuation segments after the first clip (default 1, or one a --segment-prompt)")
    add("--segment-prompt", dest="segment_prompts", action="append", default=[], metavar="TEXT",
        help="long: the prompt of the next continuation segment, repeatable, one per segment (--num-segments defaults "
        "to their count; --prompt is the first clip's), as the original's interactive video demo")
    add("--output-path", type=Path, help="default outputs/longcat_<task>.<format>")
    add("--output-format", choices=OUTPUT_FORMATS, default="mp4")
    add("--output-size", choices=OUTPUT_SIZES, default="input",
        help="i2v/continuation: written at the input image's or video's size (bicubic, as the original's demos; the "
        "default) or at the generated size (the bucket, or the refinement's size with --refine)")
    add("--fps", type=float, help="default 15 (30 after refinement)")
    add("--dtype", choices=tuple(DTYPES), help="default bfloat16 (float32 for the built-in model)")
    add("--quantize", choices=QUANTIZE_MODES, default="none",
        help="DiT weights: fp8 (FP8 GEMMs, Ada/Hopper), fp8-attention (fp8 and the self attention, dense "
        "and BSA, in FP8, Hopper), int8 or fp8-weight-only (any GPU), none (as stored)")
    add("--context-parallel", type=int, metavar="N",
        help="split each video's tokens over N devices (default: all visible devices; 1: off)")
    add("--fsdp", action=argparse.BooleanOptionalAction, default=False,
        help="with several devices: store the DiT and text encoder split over them")
    add("--max-device-memory", metavar="SIZE",
        help="device-memory budget, e.g. 24GiB or 48GB: the text encoder, DiT and VAE are placed (on the device, "
        "streamed from host memory, in chunks or tiles) to fit it, or the run is refused before loading")
    add("--compilation-cache", metavar="DIR|none",
        help="keep compiled programs in DIR so later runs skip compiling (default: $LONGCAT_COMPILATION_CACHE, "
        "else ~/.cache/longcat_jax/jax_cache); none: off")
    add("--record-calibration", type=Path, metavar="FILE.npz",
        help="save the run's DiT calls (up to 32, spread over its denoising steps) as GPTQ calibration inputs for "
        "`python -m convert SRC DST --quantize int8 --calibration FILE.npz`")
    add("--prompts", type=Path, metavar="FILE",
        help="generate every item of FILE with the models loaded once: a text file (one prompt a line), .jsonl "
        "or .json (JSON lines or an array; objects with prompt, negative_prompt, seed, image, video, num_frames, "
        "height, width, segment_prompts, output); --output-path is then the folder (default outputs/<FILE name>); items whose "
        "output exists are skipped")
    add("--batch-size", type=int, default=1, metavar="N",
        help="with --prompts: denoise up to N t2v items of one shape together (default %(default)s)")
    add("--from-json", type=Path, metavar="NAME.json",
        help="make the video of a provenance sidecar again (its settings; flags given here replace them)")
    return parser


def _override_value(text: str) -> float | str:
    try:
        return parse_override_value(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(f"{err}; give a number such as 0.9375, or none") from None


def parse_request(argv: list[str] | None = None) -> RunRequest:
    """The command line as a `RunRequest` (one field per flag)."""
    return parse_command_line(argv)[0]


def parse_command_line(argv: list[str] | None = None) -> tuple[RunRequest, set[str]]:
    """The command line as a `RunRequest`, and the names of the fields its flags set (the others are defaults)."""
    args = vars(build_parser().parse_args(argv))
    given = set(vars(build_parser(defaults=False).parse_args(argv)))
    return RunRequest(**{**args, "lora": tuple(args["lora"]), "segment_prompts": tuple(args["segment_prompts"])}), given


@sigterm_as_interrupt()  # SIGTERM (timeout, docker stop, Slurm) ends the run as Ctrl-C does
def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    request, given = parse_command_line(argv)
    command = ["python", "-m", "longcat_jax.generate", *argv]
    if os.environ.get("LONGCAT_COORDINATOR"):
        initialize_distributed()  # one process per host; before anything else touches JAX
    start = time.perf_counter()
    try:
        _check_modes(request, given)
        enable_compilation_cache(request.compilation_cache)  # before anything compiles
        with recording_dit_calls(request.record_calibration):  # its path is checked here, before any work
            if request.prompts is not None:
                return run_batch(request, command)
            asked, recorded = request, None
            if request.from_json is not None:
                recorded = read_sidecar(request.from_json)
                asked = request_from_record(recorded, request, given)
            plan = plan_run(asked)
            if recorded is not None:
                _check_replay_target(request.from_json, recorded, plan.output_path, given)
                _warn_of_differences(request.from_json, recorded, planned_record(plan, asked))
            frames, fps, stats = run_plan(plan)
        if jax.process_index() != 0:
            return 0  # with several hosts, process 0 writes the video
        path = write_video_and_sidecar(plan, asked, frames, fps, stats, command=command)
    except LongCatError as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (longcat_jax.signals)
        logger.error("%s; no output was written", describe(stop))
        return exit_status(stop)
    logger.info("Wrote %s (%d frames, %dx%d, %g fps)", path, len(frames), frames.shape[2], frames.shape[1], fps)
    print(stats.summary(), file=sys.stderr)
    logger.info("Done in %.1f s", time.perf_counter() - start)
    return 0


def _check_modes(request: RunRequest, given: set[str]) -> None:
    """Refuses flags of the CLI's modes (one run, --prompts, --from-json) that do not go together."""
    if request.prompts is not None and request.from_json is not None:
        raise InputError("--prompts FILE runs a file of prompts and --from-json one sidecar's request; give one")
    if "batch_size" in given and request.prompts is None:
        raise InputError("--batch-size groups the items of --prompts FILE; add --prompts, or leave --batch-size out")


def _check_replay_target(sidecar: Path, recorded: dict, output: Path, given: set[str]) -> None:
    """Refuses a run again that would write over the video its sidecar describes (no --output-path given, and the
    default path is where that video still is): a replay with other flags would replace it."""
    original = Path((recorded.get("output") or {}).get("path") or "")
    if "output_path" not in given and original.exists() and output.resolve() == original.resolve():
        raise InputError(f"--from-json {sidecar} would write over the video it describes ({original}); pass "
                         "--output-path for the new one")


def _warn_of_differences(sidecar: Path, recorded: dict, planned: dict) -> None:
    """Says what differs between a sidecar and its run again (a flag given, an edited file, other weights or JAX),
    and that a video denoised in a batch with others can differ slightly alone."""
    together = (recorded.get("batch") or {}).get("denoised_with") or []
    if together:
        logger.warning("--from-json %s: this video was denoised in one batch with the items of lines %s; made alone, "
                       "its float rounding (the video) can differ slightly", sidecar, ", ".join(map(str, together)))
    found = differences(recorded, planned)
    if found:
        logger.warning("--from-json %s: %s differ from the sidecar's, so the video can differ from the one it "
                       "describes", sidecar, ", ".join(found))
    else:
        logger.info("--from-json %s: prompts, seed, stages, precision, LoRAs, input files, checkpoint and JAX as "
                    "recorded", sidecar)


if __name__ == "__main__":
    sys.exit(main())
