"""Timing of a generation run: wall time per stage, seconds per denoising step, peak device memory."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
import sys
import time
from collections.abc import Iterator

import jax

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class StageTime:
    name: str
    seconds: float = 0.0
    step_times: list[float] = dataclasses.field(default_factory=list)

    @property
    def seconds_per_step(self) -> float | None:
        """Mean step time without the first step (which includes compilation); None without steps."""
        steps = self.step_times[1:] or self.step_times
        return sum(steps) / len(steps) if steps else None


class RunStats:
    """Collects stage timings; `summary()` is the table the CLI prints at the end."""

    def __init__(self):
        self.stages: list[StageTime] = []
        self.notes: list[str] = []  # settings the summary repeats under the table (e.g. the quantization)

    def branch(self) -> RunStats:
        """A RunStats holding this one's stages and notes so far (the same records) that records what follows on
        its own: each video of a batch denoised together keeps the shared stages and its own decode and
        refinement, for its sidecar."""
        other = RunStats()
        other.stages, other.notes = list(self.stages), list(self.notes)
        return other

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageTime]:
        """Times the block as stage `name` (a repeated name gets a number); yields it to collect step times."""
        count = sum(1 for s in self.stages if s.name == name or s.name.startswith(f"{name} #"))
        record = StageTime(name if count == 0 else f"{name} #{count + 1}")
        self.stages.append(record)
        start = time.perf_counter()
        try:
            yield record
        finally:
            record.seconds = time.perf_counter() - start

    def summary(self) -> str:
        lines = ["Summary:", f"  {'stage':<28}{'seconds':>10}{'steps':>7}{'s/step':>10}"]
        for stage in self.stages:
            per_step = stage.seconds_per_step
            lines.append(
                f"  {stage.name:<28}{stage.seconds:>10.2f}{len(stage.step_times) or '':>7}"
                f"{'' if per_step is None else f'{per_step:.3f}':>10}"
            )
        lines.append(f"  {'total':<28}{sum(s.seconds for s in self.stages):>10.2f}")
        lines.append(f"  {peak_memory_line()}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def peak_memory_line() -> str:
    """The largest peak memory of this process's devices as their allocators report it; the process's peak RSS
    where none does (CPU). Local devices only: another process's devices report nothing here."""
    devices = jax.local_devices()
    peaks = [(device.memory_stats() or {}).get("peak_bytes_in_use") for device in devices]
    if all(peak is not None for peak in peaks):
        where = devices[0].device_kind + (f", largest of {len(devices)}" if len(devices) > 1 else "")
        return f"peak device memory ({where}): {max(peaks) / 2**30:.2f} GiB"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    platform = devices[0].platform
    return f"peak memory (host process, {platform} has no device allocator stats): {rss_bytes / 2**30:.2f} GiB"
