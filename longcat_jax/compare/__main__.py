"""`python -m longcat_jax.compare A.mp4 B.mp4 [--json PATH] [--allow-length-mismatch] [--quiet]`.

Prints PSNR (dB) and SSIM for every frame, then overall: PSNR of the mean squared error over all frames,
the mean SSIM and the lowest SSIM with its frame. Exit status 2 on unusable input (missing file, different
frame sizes, different frame counts without --allow-length-mismatch).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from longcat_jax.compare import Comparison, compare_videos
from longcat_jax.errors import InputError


def format_report(result: Comparison, *, per_frame: bool = True) -> str:
    lines = [f"A: {result.path_a} ({result.frames_a} frames)", f"B: {result.path_b} ({result.frames_b} frames)",
             f"size {result.size[1]}x{result.size[0]}, {len(result.frames)} frames compared"]
    if per_frame:
        lines.append(f"{'frame':>5} {'PSNR dB':>8} {'SSIM':>7}")
        lines += [f"{f.index:>5} {f.psnr:>8.2f} {f.ssim:>7.4f}" for f in result.frames]
    worst = result.worst_frame
    lines.append(f"overall: PSNR {result.psnr:.2f} dB (mean per frame {result.mean_psnr:.2f}), SSIM {result.ssim:.4f} "
                 f"(lowest {worst.ssim:.4f} at frame {worst.index})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longcat_jax.compare", description=__doc__.split("\n\n")[1])
    parser.add_argument("a", type=Path, help="first video (the reference, e.g. bf16 dense)")
    parser.add_argument("b", type=Path, help="second video (e.g. --quantize fp8, or a BSA preset)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the scores to PATH as JSON")
    parser.add_argument("--allow-length-mismatch", action="store_true",
                        help="compare the first min(F_A, F_B) frames when the frame counts differ")
    parser.add_argument("--quiet", action="store_true", help="print only the overall line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = compare_videos(args.a, args.b, allow_length_mismatch=args.allow_length_mismatch)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(result, per_frame=not args.quiet))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=1))
        print(f"scores written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
