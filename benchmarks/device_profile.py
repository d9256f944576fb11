"""Where a jitted call's device time goes: one call under `jax.profiler.trace`, its GPU events summed by name.

Why: the benchmarks time whole steps; to see which kernels or XLA ops fill a step (attention, the GEMMs, the
quantization passes) without TensorBoard, this reads the trace's xplane with `jax.profiler.ProfileData` and prints
the largest names. On a GPU the "XLA Ops" line (HLO op names) is used where the trace has one, else the streams'
kernel names; on the CPU there is no device plane and nothing is printed.
"""

from __future__ import annotations

import collections
import glob
import re
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


def _stack_frames(hlo_text: str) -> dict[str, str]:
    """{stack frame id: "file:line < caller file:line"} from a compiled program's text (its FileNames,
    FileLocations and StackFrames tables)."""
    files = dict(re.findall(r'^(\d+) "([^"]*)"$', hlo_text.split("FunctionNames", 1)[0], re.M))
    locations = {i: (f, line) for i, f, line in re.findall(r"^(\d+) \{file_name_id=(\d+) .*?line=(\d+)", hlo_text, re.M)}
    frames = {i: (location, parent) for i, location, parent in
              re.findall(r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)\}", hlo_text, re.M)}

    def place(frame):
        file_id, line = locations.get(frames[frame][0], ("", "?"))
        return f"{files.get(file_id, '?').rsplit('/', 1)[-1]}:{line}"

    described = {}
    for frame, (_, parent) in frames.items():
        described[frame] = place(frame) + (f" < {place(parent)}" if parent != frame and parent in frames else "")
    return described


def fusion_sources(hlo_text: str, name: str, most: int = 2) -> str:
    """Where XLA fusion `name` of a compiled program's text comes from: its output shape and the `most` source
    places (file:line of the JAX code, and its caller) its fused instructions name most often; "" when the text has
    no such instruction."""
    # a GPU kernel is named after its fusion instruction, "." turned into "_" ("fusion_12" for %fusion.12)
    candidates = (name, re.sub(r"_(\d+)$", r".\1", name))
    heads = (re.search(rf"^\s*(?:ROOT )?%?{re.escape(c)} = (\S+) .*?calls=%?([\w.\-]+)", hlo_text, re.M)
             for c in candidates)
    head = next((h for h in heads if h), None)
    if not head:
        return ""
    shape, computation = head.groups()
    body = re.search(rf"^%?{re.escape(computation)} .*?\{{\n(.*?)^\}}", hlo_text, re.M | re.S)
    frames = _stack_frames(hlo_text)
    ids = re.findall(r"stack_frame_id=(\d+)", body.group(1) if body else "")
    counts = collections.Counter(frames.get(i, "?") for i in ids)
    return f"{shape} " + "; ".join(place for place, _ in counts.most_common(most))


def print_top(fn, top: int = 25, label: str = "", prefix: str = "", hlo_text: str | None = None) -> None:
    """Prints the `top` largest names of one fn() call as a markdown table (ms, count, share of the summed time),
    each line after `prefix`; with `hlo_text` (the compiled program's) each fusion's output and source lines too."""
    totals, summed = device_time_by_name(fn)
    if not totals:
        print(f"{prefix}{label}: no device plane in the trace (not a GPU run)", flush=True)
        return
    lines = [f"{label}: device time by op, summed {summed:.1f} ms", "| op | ms | count | share | what |",
             "|---|---|---|---|---|"]
    for name, (ms, count) in sorted(totals.items(), key=lambda item: -item[1][0])[:top]:
        what = fusion_sources(hlo_text, name) if hlo_text else ""
        lines.append(f"| {name[:90]} | {ms:.2f} | {count} | {ms / summed:.1%} | {what} |")
    for line in lines:
        print(prefix + line, flush=True)
