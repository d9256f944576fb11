"""The BSA whole call and the original's in back-to-back runs of growing length, with the GPU's clocks while each ran.

Why: the whole-call ratios at 84,480 tokens moved by several percent between calls and machines (BENCHMARKS.md)
while the GPU stayed busy through back-to-back calls (`bsa_whole_call_profile.py` prints its idle gaps). Under a
sustained load an H100 lowers its SM clock at its power cap (clock event reason 0x4, "SW power cap"), by how much
depending on what runs: this times runs of 1 to N back-to-back calls of each (ours in FP8 and bf16, the original's
Triton BSA), alternating, and samples `nvidia-smi` meanwhile, so a time comes with the clocks it ran at.

    python3 benchmarks/bsa_power_state.py --reference .ref --size 24x44x80 --sparsity 0.875
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMI_FIELDS = "timestamp,clocks.sm,power.draw,clocks_event_reasons.active"
POWER_CAP_REASON = 0x4  # nvidia-smi's clocks_event_reasons bit for the software power cap


class ClockSample(NamedTuple):
    """One `nvidia-smi` sample: when (s since the epoch), SM clock MHz, power W, active clock event reasons."""

    time: float
    sm_mhz: int
    watts: float
    reasons: int


def parse_smi_line(line: str) -> ClockSample | None:
    """A sample from a line of `nvidia-smi --query-gpu=SMI_FIELDS --format=csv,noheader,nounits`; None for others."""
    parts = [part.strip() for part in line.split(",")]
    if len(parts) != 4:
        return None
    try:
        stamp = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").astimezone()
        return ClockSample(stamp.timestamp(), int(parts[1]), float(parts[2]), int(parts[3], 16))
    except ValueError:
        return None


def clock_summary(samples: list[ClockSample], start: float, end: float) -> str:
    """"median / lowest SM MHz, capped" of the samples in [start, end], "capped" if any saw the power cap."""
    inside = [s for s in samples if start <= s.time <= end]
    if not inside:
        return "no samples"
    capped = any(s.reasons & POWER_CAP_REASON for s in inside)
    return (f"{statistics.median(s.sm_mhz for s in inside):.0f} / {min(s.sm_mhz for s in inside)} MHz"
            + (", power cap" if capped else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a checkout of the original LongCat-Video")
    parser.add_argument("--size", default="24x44x80", help="latent grid TxHxW")
    parser.add_argument("--sparsity", type=float, default=0.875)
    parser.add_argument("--runs", default="1,5,20,40", help="back-to-back calls per run, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the three calls")
    parser.add_argument("--pause", type=float, default=1.5, help="seconds idle before each call's runs")
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        parser.error("nvidia-smi is not on PATH: this script samples an NVIDIA GPU's clocks while it times the calls")

    import jax
    import jax.numpy as jnp
    from bsa_attention import Original
    from bsa_inputs import parse_grid

    from kernels import BSAParams, KernelConfig, bsa_attention

    latent = parse_grid(args.size)
    tokens = latent[0] * latent[1] * latent[2]
    q, k, v = (jax.random.normal(key, (1, tokens, 32, 128), jnp.bfloat16) for key in jax.random.split(jax.random.key(0), 3))
    params = BSAParams(sparsity=args.sparsity)
    original = Original(args.reference)
    torch = original.torch
    tq, tk, tv = original.tensors(q, k, v)

    def ours(config):
        call = jax.jit(lambda q, k, v: bsa_attention(q, k, v, latent, latent, params, backend="pallas",
                                                     kernel_config=config))
        jax.block_until_ready(call(q, k, v))

        def run(n):
            outs = [call(q, k, v) for _ in range(n)]
            jax.block_until_ready(outs)
        return run

    def theirs(n):
        with torch.no_grad():
            for _ in range(n):
                original.fn(tq, tk, tv, latent, latent, sparsity=args.sparsity, cdf_threshold=None,
                            chunk_3d_shape_q=list(params.chunk_3d_shape_q), chunk_3d_shape_k=list(params.chunk_3d_shape_k))
            torch.cuda.synchronize()

    calls = {"ours fp8": ours(KernelConfig(fp8=True)), "ours bf16": ours(KernelConfig()), "original": theirs}
    theirs(1)
    runs = [int(n) for n in args.runs.split(",")]
    with tempfile.TemporaryFile("w+") as log:
        sampler = subprocess.Popen(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits",
                                    "-lms", "25"], stdout=log, stderr=subprocess.DEVNULL, text=True)
        timed = []  # (what, n, ms a call, start, end)
        try:
            for _ in range(args.repeats):
                for name, run in calls.items():
                    time.sleep(args.pause)
                    for n in runs:
                        start = time.time()
                        run(n)
                        end = time.time()
                        timed.append((name, n, (end - start) / n * 1e3, start, end))
        finally:
            sampler.terminate()
            sampler.wait()
        log.seek(0)
        samples = [s for s in map(parse_smi_line, log) if s is not None]
    print(f"device: {jax.devices()[0].device_kind}, {args.size}, top-k {args.sparsity}, {len(samples)} clock samples")
    print("| call | back-to-back calls | ms a call | SM clock median / lowest |")
    print("|---|---|---|---|")
    for name, n, ms, start, end in timed:
        print(f"| {name} | {n} | {ms:.2f} | {clock_summary(samples, start, end)} |", flush=True)


if __name__ == "__main__":
    main()
