"""The whole pipeline under a device-memory budget: the real CLI, a real-size checkpoint of random weights, the
device memory really capped.

    python benchmarks/pipeline_budget.py                                   # GPU: every case, the released sizes
    python benchmarks/pipeline_budget.py --cases 24GiB_distill_refine --distill-steps 4 --refine-steps 4 \\
        --deadline 520 --log-dir $OUT                                      # one case, shortened for a 10-minute call
    python benchmarks/pipeline_budget.py --small                           # any machine: the same flow, tiny models

1. `tools/random_checkpoint.py` writes a complete checkpoint folder in the download's layout with random weights
   (DiT 13.6B bf16 from the released dit/config.json, UMT5-XXL, Wan 2.1 VAE, the distill and refinement LoRAs with
   the released files' names and shapes, a small tokenizer), in its own process: 41.6 GB, kept for later cases
   and later invocations (`--checkpoint`; by default in build/, or /dev/shm or the temporary folder where the
   repository's disk lacks the room; written again only if the folder holds something else).
2. Each case runs `python -m longcat_jax.generate --model-path CHECKPOINT --max-device-memory BUDGET ...` in its own
   process, with the device memory capped at the budget: XLA_PYTHON_CLIENT_MEM_FRACTION = budget / the GPU's memory
   (nvidia-smi), rounded up to 1e-6, preallocated as JAX does by default (one pool of the budget, as a card of that
   size has; see benchmarks/memory_budget.py for why preallocation stays on). The CLI plans the run within the
   budget, logs the plan and carries it out; its log goes to `--log-dir/<case>.log` and to this script's output.
3. From each log: the plan (where the text encoder, DiT weights, DiT activations and VAE run; the estimated peak),
   the summary's time per stage and seconds per step, the peak device memory by the end of each stage and the
   highest against the budget, and the DiT bytes streamed per step. Printed as tables (what was run is in each
   row: frames, steps, size) and written to `--log-dir/pipeline_budget.json`.

Cases (`--cases`):

    24GiB_distill_refine     --distill --refine: 480p distilled, then the 720p refinement (frames doubled, BSA)
    48GiB_distill_refine     the same at 48 GiB
    16GiB_480p_distill       --distill: 480p t2v, distilled
    80GiB_480p_t2v           480p t2v with guidance (50 steps, CFG: both branches in one batch of 2), an 80 GB card
    80GiB_480p_t2v_fp8       the same with --quantize fp8
    16GiB_480p_distill_int8  16GiB_480p_distill with --quantize int8
    24GiB_distill_refine_int8 24GiB_distill_refine with --quantize int8
    16GiB_480p_distill_fp8   the same with --quantize fp8 (not in the default list: FP8's compile time on GPUs)
    24GiB_distill_refine_fp8 24GiB_distill_refine with --quantize fp8 (not in the default list either)

Shortening for a time-limited machine: `--steps N` (the 480p stage's steps, default 16 distilled, 50 guided),
`--refine-steps N` (the refinement's schedule, started at t = 0.5: 4 gives 3 steps, the default 50 gives 26),
`--num-frames` (default 93); `--case-timeout S` ends a case's process after S seconds (SIGTERM, then SIGKILL 20 s
later) and `--deadline S` keeps the whole invocation within S seconds (a case that cannot start with 60 s left is
skipped, and said so). The compiled programs are cached in `--compilation-cache` (default: beside the checkpoint),
shared by the cases: a later case may load the VAE's and text encoder's programs an earlier one compiled.

`--small` runs the same flow on the CPU with small models (`tools/random_checkpoint.py --small`: a 4-block DiT and a
text encoder sized so that a budget can hold neither whole) at 64x64 pixels, each case at the smallest budget its
plan accepts (asked of the planner, plus 5%): the text encoder on the CPU and the DiT streamed from pinned host
memory. The CPU has no allocator statistics, so no peaks are read there; host and device memory are one RAM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRITER = ROOT / "tools" / "random_checkpoint.py"
sys.path.insert(0, str(WRITER.parent))
PROMPT = "A cat walks slowly across a sunny kitchen floor and stops to look at the camera."
SMALL_SIZE = ["--height", "64", "--width", "64", "--refine-height", "128", "--refine-width", "128"]
CHECKPOINT_FOLDERS = (ROOT / "build", Path("/dev/shm"), Path(tempfile.gettempdir()))  # --checkpoint's candidates
CHECKPOINT_BYTES = 44 * 10**9  # the released sizes' 41.6 GB and a margin (the writer checks the exact figure)
SMALL_MARGIN = 1.05  # --small: each case at the smallest budget its plan accepts, plus this share
START_MARGIN_S = 60  # a case is not started with less than this left of --deadline
KILL_GRACE_S = 20  # after SIGTERM, seconds before SIGKILL

_START = time.perf_counter()


@dataclasses.dataclass(frozen=True)
class Case:
    """A CLI run: its budget and flags (besides the common ones: checkpoint, prompt, frames, output)."""

    budget: str | None  # None (--small): the smallest budget the planner accepts for the run
    flags: tuple[str, ...]


CASES = {
    "24GiB_distill_refine": Case("24GiB", ("--distill", "--refine")),
    "48GiB_distill_refine": Case("48GiB", ("--distill", "--refine")),
    "16GiB_480p_distill": Case("16GiB", ("--distill",)),
    "16GiB_480p_distill_fp8": Case("16GiB", ("--distill", "--quantize", "fp8")),
    "24GiB_distill_refine_fp8": Case("24GiB", ("--distill", "--refine", "--quantize", "fp8")),
    "80GiB_480p_t2v": Case("80GiB", ()),
    "80GiB_480p_t2v_fp8": Case("80GiB", ("--quantize", "fp8")),
    "16GiB_480p_distill_int8": Case("16GiB", ("--distill", "--quantize", "int8")),
    "24GiB_distill_refine_int8": Case("24GiB", ("--distill", "--refine", "--quantize", "int8")),
}
DEFAULT_CASES = ("24GiB_distill_refine", "48GiB_distill_refine", "16GiB_480p_distill")
SMALL_CASES = {
    "small_distill_refine": Case(None, ("--distill", "--refine")),
    "small_480p_distill": Case(None, ("--distill",)),
}


def _log(message: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", flush=True)


def _remaining(args) -> float:
    return math.inf if args.deadline is None else args.deadline - (time.perf_counter() - _START)


def gpu_memory_bytes() -> int | None:
    """The first GPU's memory (nvidia-smi); None without one. Asked outside JAX: this process never takes a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=False).stdout.split()
    return int(out[0]) * 2**20 if out else None


def memory_fraction(budget_bytes: int, gpu_bytes: int) -> str:
    """XLA_PYTHON_CLIENT_MEM_FRACTION of `budget_bytes`, rounded up to 1e-6 (a pool at least the budget, so the plan
    gets the whole budget; at most 150 KB more on a 141 GB GPU)."""
    return f"{math.ceil(budget_bytes / gpu_bytes * 1e6) / 1e6:.6f}"


# ------------------------------------------------------------------------------------------ running a process


@dataclasses.dataclass
class Finished:
    """A child process's end: exit status (None: stopped at its time limit, or because this process was
    interrupted: `interrupted`), its output lines and wall seconds."""

    returncode: int | None
    lines: list[str]
    seconds: float
    interrupted: bool = False


def run_logged(cmd: list[str], *, env: dict, timeout: float | None, log_path: Path | None, label: str) -> Finished:
    """Runs `cmd`, echoing each output line (stdout and stderr) here and into `log_path`. At `timeout` seconds the
    process gets SIGTERM (the CLI stops with one line, as on Ctrl-C), then SIGKILL `KILL_GRACE_S` later; so does it
    when this process is interrupted.

    The DiT and memory benchmarks' runner (`dit_step.run_child`) keeps only a result line and a tail; a CLI run's
    whole log is the result here, so it is kept and parsed."""
    lines: list[str] = []
    start = time.perf_counter()
    timed_out = threading.Event()
    interrupted = False
    with (open(log_path, "w") if log_path else contextlib.nullcontext()) as log, \
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        def stop():
            timed_out.set()
            proc.send_signal(signal.SIGTERM)
            killer = threading.Timer(KILL_GRACE_S, proc.kill)
            killer.daemon = True
            killer.start()

        timer = threading.Timer(timeout, stop) if timeout is not None else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
                if line.strip():
                    print(f"  {label}| {line}", flush=True)
            proc.wait()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM here (`main`): the child stops too, as at its time limit
            interrupted = True
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
        finally:
            if timer:
                timer.cancel()
    seconds = time.perf_counter() - start
    if interrupted:
        _log(f"{label}: interrupted")
        return Finished(None, lines, seconds, interrupted=True)
    if timed_out.is_set():
        _log(f"{label}: stopped at its time limit of {timeout:.0f} s")
        return Finished(None, lines, seconds)
    return Finished(proc.returncode, lines, seconds)


# ------------------------------------------------------------------------------------------ the checkpoint


def default_checkpoint(small: bool) -> Path:
    """Where the checkpoint goes without --checkpoint: the first of `CHECKPOINT_FOLDERS` that holds a finished one,
    else the first whose file system has room for it (a machine's root disk may not), else the first."""
    from random_checkpoint import MARKER  # tools/ (its imports start no JAX backend)

    name = "pipeline_budget_small" if small else "pipeline_budget"
    candidates = [folder / name for folder in CHECKPOINT_FOLDERS if folder.is_dir() or folder == ROOT / "build"]
    for candidate in candidates:
        if (candidate / MARKER).is_file():
            return candidate
    for candidate in candidates:
        existing = candidate.parent if candidate.parent.is_dir() else ROOT
        if small or shutil.disk_usage(existing).free >= CHECKPOINT_BYTES:
            return candidate
    return candidates[0]



def write_checkpoint(args) -> dict | None:
    """Runs the checkpoint writer in its own process (it draws the weights on the device, which this process never
    touches); returns its record (bytes, seconds), None if it failed or ran out of time."""
    cmd = [sys.executable, str(WRITER), str(args.checkpoint)] + ["--small"] * args.small + ["--force"] * args.force_write
    timeout = _remaining(args) - START_MARGIN_S
    if timeout <= 0:
        _log("no time left to write the checkpoint")
        return None
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    finished = run_logged(cmd, env=env, timeout=None if math.isinf(timeout) else timeout, log_path=None,
                          label="checkpoint")
    if finished.interrupted:
        raise KeyboardInterrupt
    result = next((json.loads(line[len("RESULT "):]) for line in finished.lines if line.startswith("RESULT ")), None)
    if finished.returncode != 0 or result is None:
        _log(f"writing the checkpoint failed (exit status {finished.returncode})")
        return None
    result["wall_seconds"] = round(finished.seconds, 1)
    how = "kept from an earlier run" if result["kept"] else (f"written in {result['seconds']:.1f} s, "
                                                   f"{result['bytes'] / 1e9 / result['seconds']:.2f} GB/s")
    _log(f"checkpoint {args.checkpoint}: {result['bytes'] / 1e9:.2f} GB, {how}")
    return result


# ------------------------------------------------------------------------------------------ one case


def cli_flags(case: Case, args) -> list[str]:
    """The CLI's flags of `case` (the budget aside)."""
    flags = ["--model-path", str(args.checkpoint), "--prompt", PROMPT, "--num-frames", str(args.num_frames),
             "--context-parallel", "1", "--output-format", "npz", *case.flags]
    if args.steps is not None:
        flags += ["--num-inference-steps", str(args.steps)]
    if args.refine_steps is not None and "--refine" in case.flags:
        flags += ["--refine-inference-steps", str(args.refine_steps)]
    if args.small:
        flags += SMALL_SIZE if "--refine" in case.flags else SMALL_SIZE[:4]
    flags += ["--compilation-cache", str(args.compilation_cache)]
    return flags


def smallest_budget(flags: list[str]) -> int:
    """The smallest budget the planner accepts for the run of `flags`, plus `SMALL_MARGIN` (in this process: --small
    runs on the CPU, nothing here takes a GPU)."""
    from longcat_jax.generate import parse_request
    from longcat_jax.memory.plan import MemoryBudgetError
    from longcat_jax.pipelines.tasks import plan_run

    try:
        plan_run(parse_request([*flags, "--output-path", str(Path(tempfile.gettempdir()) / "plan.npz"),
                                "--max-device-memory", "1B"]))
    except MemoryBudgetError as refusal:
        return math.ceil(refusal.smallest_budget * SMALL_MARGIN)
    raise RuntimeError("the planner accepted a budget of one byte")


def run_case(name: str, case: Case, args, gpu_bytes: int | None) -> dict:
    """Runs one case's CLI process and returns what its log says (see `parse_log`)."""
    flags = cli_flags(case, args)
    budget = case.budget or f"{smallest_budget(flags)}B"
    from longcat_jax.memory.sizes import format_size, parse_size  # no JAX: this process never takes a GPU

    budget_bytes = parse_size(budget)
    env = dict(os.environ, TQDM_MININTERVAL="10")  # the bars, not a line every 0.1 s in the log
    cap = None
    if gpu_bytes:
        cap = memory_fraction(budget_bytes, gpu_bytes)
        env.update(XLA_PYTHON_CLIENT_PREALLOCATE="true", XLA_PYTHON_CLIENT_MEM_FRACTION=cap)
    shown = budget if case.budget else f"{format_size(budget_bytes)} (the smallest its plan accepts + 5%)"
    result = {"case": name, "budget": shown, "budget_bytes": budget_bytes, "mem_fraction": cap,
              "flags": flags[2:], "run": describe_run(case, args)}
    remaining = _remaining(args)
    if remaining < START_MARGIN_S:
        _log(f"{name}: not run, {max(remaining, 0):.0f} s left of --deadline {args.deadline:.0f}")
        return {**result, "status": "not run (deadline)"}
    timeout = min(args.case_timeout or math.inf, remaining - 5)
    with tempfile.TemporaryDirectory(prefix="pipeline_budget_", dir=args.video_dir) as videos:
        cmd = [sys.executable, "-m", "longcat_jax.generate", *flags, "--max-device-memory", budget,
               "--output-path", str(Path(videos) / f"{name}.npz")]
        _log(f"{name}: budget {budget}" + (f", XLA_PYTHON_CLIENT_MEM_FRACTION={cap}" if cap else ", no cap (CPU)")
             + (f", time limit {timeout:.0f} s" if not math.isinf(timeout) else ""))
        _log("  " + " ".join(cmd))
        finished = run_logged(cmd, env=env, timeout=None if math.isinf(timeout) else timeout,
                              log_path=args.log_dir / f"{name}.log", label=name)
    status = "ok" if finished.returncode == 0 else "interrupted" if finished.interrupted else (
        f"stopped at {timeout:.0f} s" if finished.returncode is None else f"exit status {finished.returncode}")
    parsed = parse_log(finished.lines)
    if status != "ok":
        parsed["tail"] = [line for line in finished.lines if line.strip()][-15:]
    return {**result, "status": status, "wall_seconds": round(finished.seconds, 1), **parsed}


def describe_run(case: Case, args) -> str:
    """What a case runs, for the tables: frames, the stages and their steps."""
    distilled = "--distill" in case.flags
    parts = [f"{args.num_frames} frames", f"{'64x64' if args.small else '480p'} t2v "
             + ("distilled" if distilled else "guided (CFG batch of 2)"),
             f"{args.steps or (16 if distilled else 50)} steps"]
    if "--refine" in case.flags:
        steps = args.refine_steps or 50
        parts.append(f"+ refinement {'704x1280' if not args.small else '128x128'}, frames doubled, "
                     f"{steps}-step schedule from t=0.5 ({min(steps, steps // 2 + 1)} steps)")
    if "--quantize" in case.flags:
        parts.append(f"--quantize {case.flags[case.flags.index('--quantize') + 1]}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ reading a log

_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$")
_STAGE_ROW = re.compile(r"^  (?P<name>\S.*?)\s{2,}(?P<seconds>\d+\.\d\d)(?:\s+(?P<steps>\d+)\s+(?P<per_step>\d+\.\d+))?\s*$")
_SIZE = r"(\d+(?:\.\d+)?) (B|KiB|MiB|GiB|TiB)"
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit])


def parse_log(lines: list[str]) -> dict:
    """What a CLI run's log says: the plan (placements, estimated peak), the summary's stages (seconds, steps,
    s/step), the overall device peak, the peaks by stage, the highest against the budget, the bytes streamed per
    step, and the error (if the run failed)."""
    out: dict = {"plan": [], "applied": [], "stages": [], "peaks_by_stage": [], "streamed_per_step": []}
    in_summary = False
    for line in lines:
        line = line.rsplit("\r", 1)[-1]
        entry = _LOG_LINE.match(line)
        if entry:
            message = entry["message"]
            if entry["logger"] == "longcat_jax.memory.plan" and not message.startswith("  stage"):
                out["plan"].append(message.strip())
            elif entry["logger"] in ("longcat_jax.memory.apply", "longcat_jax.memory.streaming"):
                out["applied"].append(message)
            elif entry["level"] == "ERROR":
                out["error"] = message
            continue
        if line.startswith("Summary:"):
            in_summary = True
            continue
        if not in_summary:
            continue
        row = _STAGE_ROW.match(line)
        if row and "peak" not in row["name"]:
            out["stages"].append({"stage": row["name"], "seconds": float(row["seconds"]),
                                  "steps": int(row["steps"]) if row["steps"] else None,
                                  "s_per_step": float(row["per_step"]) if row["per_step"] else None})
        elif (peak := re.search(r"peak device memory \((.+?)\): (\d+\.\d+) GiB", line)):
            out["device"], out["peak_gib"] = peak[1], float(peak[2])
        elif line.strip().startswith("peak device memory by the end of:"):
            for stage, number, unit in re.findall(r"(?:: |, )([^,:]+?) " + _SIZE, line):
                out["peaks_by_stage"].append({"stage": stage, "bytes": _bytes(number, unit)})
        elif line.strip().startswith("highest peak"):
            out["within_budget"] = " within the budget" in line
        elif line.strip().startswith("DiT weights streamed per denoising step:"):
            out["streamed_per_step"] = [_bytes(n, u) for n, u in re.findall(_SIZE, line)]
        elif line.strip().startswith("memory budget"):
            estimate = re.search(r"estimated peak " + _SIZE, line)
            out["estimated_peak_bytes"] = _bytes(*estimate.groups()) if estimate else None
    return out


# ------------------------------------------------------------------------------------------ tables


def _size(num_bytes: int | None) -> str:
    from longcat_jax.memory.sizes import format_size

    return "-" if num_bytes is None else format_size(num_bytes)


def _placement(plan: list[str], key: str) -> str:
    line = next((p for p in plan if p.startswith(key + ":")), None)
    return "-" if line is None else line.split(":", 1)[1].strip()


def print_tables(results: list[dict], checkpoint: dict | None) -> None:
    if checkpoint:
        how = "kept from an earlier run" if checkpoint.get("kept") else f"written in {checkpoint['seconds']:.1f} s"
        print(f"\ncheckpoint: {checkpoint['bytes'] / 1e9:.2f} GB of random weights, {how}")
    print("\n| case | what ran | budget | XLA_PYTHON_CLIENT_MEM_FRACTION | status | text encoder | DiT weights | "
          "DiT activations | VAE | estimated peak | measured peak | within budget | DiT bytes streamed per step | "
          "total s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        total = next((s["seconds"] for s in r.get("stages", []) if s["stage"] == "total"), None)
        streamed = ", then ".join(_size(b) for b in r.get("streamed_per_step", [])) or "none"
        within = {True: "yes", False: "NO", None: "-"}[r.get("within_budget")]
        peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f} GiB"
        plan = r.get("plan", [])
        print(f"| {r['case']} | {r['run']} | {r['budget']} | {r.get('mem_fraction') or 'no cap'} | {r['status']} | "
              f"{_placement(plan, 'text encoder')} | {_placement(plan, 'DiT weights')} | "
              f"{_placement(plan, 'DiT activations')} | {_placement(plan, 'VAE')} | "
              f"{_size(r.get('estimated_peak_bytes'))} | {peak} | {within} | {streamed} | "
              f"{'-' if total is None else f'{total:.1f}'} |")
    for r in results:
        if r.get("error"):
            print(f"\n{r['case']}: {r['error']}")
        if r.get("tail"):
            print(f"\n{r['case']} ({r['status']}), the log's last lines:\n" + "\n".join(r["tail"]))
        if not r.get("stages"):
            continue
        print(f"\n{r['case']} ({r['run']}), stages:")
        print("| stage | seconds | steps | s/step (first step left out) |")
        print("|---|---|---|---|")
        for s in r["stages"]:
            steps = "" if s["steps"] is None else s["steps"]
            per_step = "" if s["s_per_step"] is None else f"{s['s_per_step']:.3f}"
            print(f"| {s['stage']} | {s['seconds']:.2f} | {steps} | {per_step} |")
        if r["peaks_by_stage"]:
            print("peak device memory by the end of: "
                  + ", ".join(f"{p['stage']} {_size(p['bytes'])}" for p in r["peaks_by_stage"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", help="comma-separated; default " + ",".join(DEFAULT_CASES) + " (--small: "
                        + ",".join(SMALL_CASES) + "); all: " + ", ".join(CASES))
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint folder (default: pipeline_budget[_small] in "
                        "build/, /dev/shm or the temporary folder: one holding it, else the first with room)")
    parser.add_argument("--force-write", action="store_true", help="write the checkpoint even if it is there")
    parser.add_argument("--num-frames", type=int, default=None, help="video frames (default 93; --small 5)")
    parser.add_argument("--steps", "--distill-steps", type=int, dest="steps",
                        help="steps of the 480p stage (default 16 distilled, 50 guided; --small 1)")
    parser.add_argument("--refine-steps", type=int, help="the refinement's schedule (default 50: 26 steps; --small 2)")
    parser.add_argument("--case-timeout", type=float, help="seconds before a case's process is stopped")
    parser.add_argument("--deadline", type=float, help="seconds the whole invocation may take")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "outputs" / "pipeline_budget",
                        help="each case's log and pipeline_budget.json (no videos: they go to --video-dir)")
    parser.add_argument("--video-dir", type=Path, help="where each case's video is written, then deleted "
                        "(default: the system's temporary folder)")
    parser.add_argument("--compilation-cache", help="the CLI's --compilation-cache (default: beside the checkpoint)")
    parser.add_argument("--small", action="store_true", help="tiny models on the CPU (see above)")
    args = parser.parse_args(argv)
    # This process only plans (--small) and reads configs; should anything here start JAX on a GPU, it must not
    # take the memory the cases are capped to. The cases set their own allocator settings.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    table = SMALL_CASES if args.small else CASES
    names = args.cases.split(",") if args.cases else list(SMALL_CASES if args.small else DEFAULT_CASES)
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(table)}")
    if args.small:
        args.num_frames = args.num_frames or 5
        args.steps = args.steps or 1
        args.refine_steps = args.refine_steps or 2
    args.num_frames = args.num_frames or 93
    args.checkpoint = args.checkpoint or default_checkpoint(args.small)
    args.compilation_cache = args.compilation_cache or str(args.checkpoint.parent / "pipeline_budget_jax_cache")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    if args.video_dir:
        args.video_dir.mkdir(parents=True, exist_ok=True)
    gpu_bytes = None if args.small else gpu_memory_bytes()
    _log(f"cases {', '.join(names)}; GPU memory {_size(gpu_bytes)}" if gpu_bytes else
         f"cases {', '.join(names)}; no GPU: the budgets are planned, not capped")
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout`, a machine's time limit: stop the case, keep the results
    checkpoint, results, interrupted = None, [], False
    try:
        checkpoint = write_checkpoint(args)
        for name in names if checkpoint else []:
            results.append(run_case(name, table[name], args, gpu_bytes))
            if results[-1]["status"] == "interrupted":
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
        _log("interrupted: the results so far follow")
    record = {"checkpoint": checkpoint, "gpu_bytes": gpu_bytes, "results": results}
    (args.log_dir / "pipeline_budget.json").write_text(json.dumps(record, indent=1))
    print_tables(results, checkpoint)
    ok = checkpoint and len(results) == len(names) and all(r["status"] == "ok" for r in results)
    return 130 if interrupted else 0 if ok else 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
