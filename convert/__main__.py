"""`python -m convert SRC DST`: convert an original LongCat-Video checkpoint folder (or FastVideo's conversion of it)
into our format.

Every failure ends with one line on stderr and no traceback: a refusal or a full disk (exit status 1), or
Ctrl-C / SIGTERM (128 + the signal's number), after which `--resume` continues the conversion.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from pathlib import Path

from longcat_jax.errors import LongCatError


class _Terminated(KeyboardInterrupt):
    """SIGTERM (sent by `timeout`, `docker stop`, Slurm), raised where Ctrl-C would be."""


def _raise_terminated(signum, frame):
    raise _Terminated


def _without_closed_loop_reports(previous):
    """An Orbax save cut short (Ctrl-C, a full disk) leaves tensorstore callbacks that report "Event loop is
    closed" as unraisable exceptions, a traceback each; this hook drops those and passes on anything else."""
    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)
    return hook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert an original LongCat-Video checkpoint (dit/, vae/, text_encoder/, lora/*.safetensors, "
        "tokenizer/, scheduler/), or FastVideo's conversion of it (transformer/ for dit/, lora/distilled/, "
        "lora/refinement/), into Orbax checkpoints that longcat_jax loads directly. Streams one block at a "
        "time; dtypes are kept.",
    )
    parser.add_argument("src", help="the downloaded LongCat-Video folder (the original's or FastVideo's layout)")
    parser.add_argument("dst", help="a new (or empty) folder for the converted checkpoint")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted conversion into DST, keeping its finished parts and chunks "
                        "(the source must be unchanged; with --calibration the finished blocks are not rounded again); "
                        "without it an unfinished conversion in DST is cleared and begun again")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="convert a source that lacks parts every generation run needs (dit/, vae/, "
                        "text_encoder/, tokenizer/), e.g. only a LoRA; `generate` refuses such a folder")
    parser.add_argument("--quantize", choices=("none", "fp8", "int8"), default="none",
                        help="store the DiT's large Linears as FP8 e4m3 or INT8 with per-output-channel scales "
                        "(about half the bf16 size); load the result with the same --quantize (fp8: also "
                        "fp8-weight-only)")
    parser.add_argument("--calibration", metavar="random|FILE.npz",
                        help="with --quantize: round the DiT's quantized weights by GPTQ on these DiT inputs, one "
                        "block at a time on the default JAX device (the real size took about 4 minutes on an H200, "
                        "about 10 minutes a block on 2 CPU cores): 'random' for stand-in inputs, or an .npz of "
                        "recorded inputs (`generate --record-calibration`; see "
                        "longcat_jax.models.dit.calibration_inputs); without it weights round to nearest")
    args = parser.parse_args(argv)
    if args.calibration is not None and args.quantize == "none":
        parser.error("--calibration rounds quantized weights; pass --quantize int8 or fp8 with it")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    # Imported after logging is configured: Orbax's first log line would otherwise configure it (absl does).
    from convert.api import convert_checkpoint
    from convert.destination import describe_unfinished

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        done = convert_checkpoint(args.src, args.dst, resume=args.resume, allow_incomplete=args.allow_incomplete,
                                  progress=not args.quiet, quantize=args.quantize,
                                  calibration=args.calibration)
    except KeyboardInterrupt as e:
        # A save cut short leaves Orbax's asyncio tasks unfinished; their complaints at garbage collection
        # ("Task was destroyed but it is pending", "coroutine ... was never awaited") are noise here.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        print(f"interrupted: {describe_unfinished(Path(args.dst))}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT)
    except (LongCatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    for part, path in done.items():
        print(f"{part}: {path}")
    return 0


if __name__ == "__main__":
    # For the whole process: the reports come from tensorstore's threads until the interpreter exits.
    sys.unraisablehook = _without_closed_loop_reports(sys.unraisablehook)
    sys.exit(main())
