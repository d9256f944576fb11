"""Where a jitted call's device time goes: one call under `jax.profiler.trace`, its GPU events summed by name.

Why: the benchmarks time whole steps; to see which kernels or XLA ops fill a step (attention, the GEMMs, the
quantization passes) without TensorBoard, this reads the trace's xplane with `jax.profiler.ProfileData` and prints
the largest names. On a GPU the "XLA Ops" line (HLO op names) is used where the trace has one, else the streams'
kernel names; on the CPU there is no device plane and nothing is printed.
"""

from __future__ import annotations

import collections
import glob
import tempfile

import jax
from jax.profiler import ProfileData


def device_time_by_name(fn) -> tuple[dict[str, tuple[float, int]], float]:
    """Runs fn() once under the profiler: ({event name: (total ms, count)}, the summed ms), or ({}, 0.0) without a
    device plane."""
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            fn()
        files = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)
        profile = ProfileData.from_file(files[0])
        planes = [plane for plane in profile.planes if plane.name.startswith("/device:GPU")]
        if not planes:
            return {}, 0.0
        lines = list(planes[0].lines)
        chosen = [line for line in lines if line.name == "XLA Ops"] or [line for line in lines if "Stream" in line.name]
        totals = collections.defaultdict(lambda: [0.0, 0])
        for line in chosen:
            for event in line.events:
                totals[event.name][0] += event.duration_ns / 1e6
                totals[event.name][1] += 1
    summed = sum(ms for ms, _ in totals.values())
    return {name: (ms, count) for name, (ms, count) in totals.items()}, summed


def print_top(fn, top: int = 25, label: str = "", prefix: str = "") -> None:
    """Prints the `top` largest names of one fn() call as a markdown table (ms, count, share of the summed time),
    each line after `prefix`."""
    totals, summed = device_time_by_name(fn)
    if not totals:
        print(f"{prefix}{label}: no device plane in the trace (not a GPU run)", flush=True)
        return
    lines = [f"{label}: device time by op, summed {summed:.1f} ms", "| op | ms | count | share |", "|---|---|---|---|"]
    for name, (ms, count) in sorted(totals.items(), key=lambda item: -item[1][0])[:top]:
        lines.append(f"| {name[:90]} | {ms:.2f} | {count} | {ms / summed:.1%} |")
    for line in lines:
        print(prefix + line, flush=True)
