"""The device's peak memory by the end of each stage of a run, for its summary.

The allocator reports one peak since the process started, never reset, so each mark is the peak reached by the end
of that stage; a stage that raised it is the one whose mark is higher than the one before. A stage marked again (the
refinement's denoising and decode after the generation's) is numbered as the run's timing table numbers it
("decode #2").
"""

from __future__ import annotations

from longcat_jax.memory.device import peak_bytes
from longcat_jax.memory.sizes import format_size


class PeakLog:
    """Marks taken at stage ends; `line()` is the summary's line (None where the device reports no peak)."""

    def __init__(self):
        self.marks: list[tuple[str, int]] = []

    def mark(self, stage: str) -> None:
        peak = peak_bytes()
        if peak is not None:
            count = sum(1 for name, _ in self.marks if name == stage or name.startswith(f"{stage} #"))
            self.marks.append((stage if count == 0 else f"{stage} #{count + 1}", peak))

    @property
    def highest(self) -> tuple[str, int] | None:
        """(stage, bytes) of the first mark at the run's peak so far: the stage that reached it; None without marks."""
        if not self.marks:
            return None
        top = max(peak for _, peak in self.marks)
        return next(mark for mark in self.marks if mark[1] == top)

    def line(self) -> str | None:
        if not self.marks:
            return None
        return "peak device memory by the end of: " + ", ".join(f"{stage} {format_size(peak)}"
                                                                  for stage, peak in self.marks)
