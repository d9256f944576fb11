"""The persistent compilation cache at the real size: the same CLI run twice, the second reading what the first compiled.

    python benchmarks/compile_cache.py                       # GPU: a real-size checkpoint of random weights
    python benchmarks/compile_cache.py --checkpoint /dev/shm/pb --steps 3 --log-dir $OUT
    python benchmarks/compile_cache.py --small               # any machine: the same flow, tiny models

The checkpoint is the one `benchmarks/pipeline_budget.py` writes (`tools/random_checkpoint.py`: the released sizes,
random weights, 41.6 GB; kept for later invocations). The compilation cache starts empty in a fresh folder, then
`python -m longcat_jax.generate --model-path CHECKPOINT --distill --num-inference-steps N --compilation-cache FOLDER`
runs twice, each in its own process and without a memory cap (`--flags` replaces `--distill`). From each log's
summary: the seconds of every stage, and the first denoising step (the stage's seconds less its other steps at the
stage's s/step): the stages that compile (text encoding, the first step, the VAE decode) are where the second run
gains; the loads and the later steps are the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline_budget import (  # this script's sibling: the checkpoint, the logged CLI process, the log's summary
    PROMPT,
    SMALL_SIZE,
    _log,
    default_checkpoint,
    parse_log,
    run_logged,
    write_checkpoint,
)

DENOISING_SUFFIX = "denoising"


def first_step_seconds(stages: list[dict]) -> float | None:
    """The first denoising stage's first step: its seconds less its other steps at the summary's s/step (which
    leaves out that compiling step)."""
    for stage in stages:
        if stage["stage"].endswith(DENOISING_SUFFIX) and stage["steps"]:
            others = (stage["steps"] - 1) * (stage["s_per_step"] or 0.0)
            return stage["seconds"] - others
    return None


def cli_command(args, cache: Path, output: Path) -> list[str]:
    size = SMALL_SIZE[:4] if args.small else []
    return [sys.executable, "-m", "longcat_jax.generate", "--model-path", str(args.checkpoint), "--prompt", PROMPT,
            "--num-frames", str(args.num_frames), "--num-inference-steps", str(args.steps), *shlex.split(args.flags),
            *size, "--output-format", "npz", "--output-path", str(output), "--compilation-cache", str(cache)]


def run_twice(args) -> list[dict]:
    """Both runs over one empty cache folder; each run's parsed summary, total wall seconds and cache size."""
    cache = Path(tempfile.mkdtemp(prefix="longcat_compile_cache_"))
    runs = []
    try:
        for index in (1, 2):
            output = Path(tempfile.gettempdir()) / f"compile_cache_run{index}.npz"
            finished = run_logged(cli_command(args, cache, output), env=dict(os.environ), timeout=args.run_timeout,
                                  log_path=args.log_dir / f"run{index}.log", label=f"run {index}")
            output.unlink(missing_ok=True)
            parsed = parse_log(finished.lines)
            files = [f for f in cache.rglob("*") if f.is_file()]
            runs.append({"run": index, "returncode": finished.returncode, "wall_s": round(finished.seconds, 1),
                         "stages": parsed["stages"], "first_step_s": first_step_seconds(parsed["stages"]),
                         "peak_gib": parsed.get("peak_gib"), "cache_files": len(files),
                         "cache_bytes": sum(f.stat().st_size for f in files)})
            if finished.returncode != 0:
                _log(f"run {index} failed (exit status {finished.returncode}); see {args.log_dir / f'run{index}.log'}")
                break
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return runs


def print_table(runs: list[dict]) -> None:
    names = [s["stage"] for s in runs[0]["stages"]]
    print("\n| stage | " + " | ".join(f"run {r['run']} s" for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for name in names:
        cells = [next((f"{s['seconds']:.2f}" for s in r["stages"] if s["stage"] == name), "-") for r in runs]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for label, key, fmt in (("first denoising step", "first_step_s", "{:.2f}"), ("wall (process)", "wall_s", "{:.1f}"),
                            ("cache files after the run", "cache_files", "{}")):
        cells = [fmt.format(r[key]) if r[key] is not None else "-" for r in runs]
        print(f"| {label} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint folder (default: pipeline_budget.py's)")
    parser.add_argument("--force-write", action="store_true", help="write the checkpoint even if it is there")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps of each run (default 3)")
    parser.add_argument("--num-frames", type=int, default=None, help="video frames (default 93; --small 5)")
    parser.add_argument("--flags", default="--distill", help="the CLI's task flags (default --distill)")
    parser.add_argument("--run-timeout", type=float, default=None, help="seconds before a run's process is stopped")
    parser.add_argument("--log-dir", type=Path, default=Path("outputs") / "compile_cache",
                        help="each run's log and compile_cache.json")
    parser.add_argument("--small", action="store_true", help="tiny models on the CPU")
    args = parser.parse_args(argv)
    args.num_frames = args.num_frames or (5 if args.small else 93)
    args.checkpoint = args.checkpoint or default_checkpoint(args.small)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    args.deadline = None
    if write_checkpoint(args) is None:
        return 1
    runs = run_twice(args)
    (args.log_dir / "compile_cache.json").write_text(json.dumps(runs, indent=1))
    print_table(runs)
    return 0 if len(runs) == 2 and all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
