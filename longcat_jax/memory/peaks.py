"""The device's peak memory by the end of each stage of a run, and the DiT bytes streamed, for its summary.

The allocator reports one peak since the process started, never reset, so each mark is the peak reached by the end
of that stage; a stage that raised it is the one whose mark is higher than the one before.
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
            self.marks.append((stage, peak))

    def line(self) -> str | None:
        if not self.marks:
            return None
        return "peak device memory by the end of: " + ", ".join(f"{stage} {format_size(peak)}"
                                                                  for stage, peak in self.marks)
