"""Results of parity cases and how the tool prints them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

STATUSES = ("PASS", "FAIL", "SKIP")


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """One compared case: relative L2 error against the reference, the tolerance, the verdict and a note."""

    name: str
    rel_l2: float
    tol: float
    status: str
    note: str = ""

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


def verdict(error: float, tol: float) -> str:
    """PASS when the error is a number within the tolerance, else FAIL."""
    return "PASS" if not math.isnan(error) and error <= tol else "FAIL"


def format_line(group: str, result: CaseResult) -> str:
    """`GROUP/CASE rel_l2=... tol=... STATUS` plus the note, if any."""
    line = f"{group}/{result.name} rel_l2={result.rel_l2:.3e} tol={result.tol:.0e} {result.status}"
    return f"{line}  ({result.note})" if result.note else line


def summary_line(results: Sequence[CaseResult]) -> str:
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    return f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"
