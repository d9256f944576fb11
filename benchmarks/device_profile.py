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


def device_events(fn) -> list[tuple[str, int, int]]:
    """Runs fn() once under the profiler: its GPU events (name, start ns, end ns) in start order, or [] without a
    device plane."""
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            fn()
        files = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)
        profile = ProfileData.from_file(files[0])
        planes = [plane for plane in profile.planes if plane.name.startswith("/device:GPU")]
        if not planes:
            return []
        lines = list(planes[0].lines)
        chosen = [line for line in lines if line.name == "XLA Ops"] or [line for line in lines if "Stream" in line.name]
        events = [(event.name, int(event.start_ns), int(event.end_ns)) for line in chosen for event in line.events]
    return sorted(events, key=lambda event: event[1])


def device_time_by_name(fn) -> tuple[dict[str, tuple[float, int]], float]:
    """Runs fn() once under the profiler: ({event name: (total ms, count)}, the summed ms), or ({}, 0.0) without a
    device plane."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    for name, start, end in device_events(fn):
        totals[name][0] += (end - start) / 1e6
        totals[name][1] += 1
    summed = sum(ms for ms, _ in totals.values())
    return {name: (ms, count) for name, (ms, count) in totals.items()}, summed


def print_idle_gaps(fn, top: int = 8, label: str = "") -> None:
    """Prints the span of fn()'s GPU events (the first one's start to the last one's end), the time in them and the
    `top` longest idle stretches between them with the ops on each side: where a timed call's wall time exceeds
    its summed device time, this says whether the GPU waited inside the calls or between them."""
    events = device_events(fn)
    if not events:
        print(f"{label}: no device plane in the trace (not a GPU run)", flush=True)
        return
    busy_until, gaps, busy = events[0][1], [], 0
    previous = events[0][0]
    for name, start, end in events:
        if start > busy_until:
            gaps.append(((start - busy_until) / 1e6, previous, name))
        busy += max(0, end - max(start, busy_until))
        if end > busy_until:
            busy_until, previous = end, name
    span = (busy_until - events[0][1]) / 1e6
    print(f"{label}: {len(events)} events over {span:.2f} ms, the GPU busy {busy / 1e6:.2f} ms of it, idle "
          f"{sum(gap for gap, _, _ in gaps):.2f} ms in {len(gaps)} gaps; the longest:", flush=True)
    for gap, before, after in sorted(gaps, reverse=True)[:top]:
        print(f"| {gap:.3f} ms | after {before[:60]} | before {after[:60]} |", flush=True)


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
