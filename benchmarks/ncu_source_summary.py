"""Summarise an Nsight Compute source page (SASS, CSV) of one kernel: the instruction mix per unit of work and where
the warps stall.

Why: `ncu --page source` lists every SASS instruction with its executed count and its warp-stall samples, thousands of
rows for a Mosaic GPU kernel; what a kernel change needs is the mix per block pair (which instructions a step spends)
and the instructions the warps wait at. This is how BENCHMARKS.md's "What bounds the FP8 kernel" figures were made.

On the GPU:

    ncu --clock-control none -k regex:mosaic --launch-skip 2 --launch-count 1 --section SourceCounters \
        --section WarpStateStats -o /tmp/r python3 benchmarks/bsa_forward_kernels.py --sizes 24x44x80 \
        --sparsities 0.875 --variants fp8
    ncu --import /tmp/r.ncu-rep --page source --csv --print-source sass > src.csv

then anywhere:

    python3 benchmarks/ncu_source_summary.py src.csv --units 27878400 [--top 40]

`--units`: what the executed counts are divided by, e.g. selected block pairs times the consumer warps that run each
one (84,480 tokens at top-k 0.875, 32 heads: 32 * 1320 * 165 pairs, times 4 warps, = 27,878,400).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SOURCE, ADDRESS, EXECUTED, SAMPLES = "Source", "Address", "Instructions Executed", "Warp Stall Sampling (All Samples)"


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction of the source page: its address, text, executed count and stall samples by reason."""

    address: str
    source: str
    executed: float
    samples: float
    stalls: dict[str, float]

    @property
    def opcode(self) -> str:
        """The base opcode (`FMUL` of `@P0 FMUL.FTZ R1, R2, R3`)."""
        words = self.source.split()
        word = words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "")
        return word.split(".")[0]


def read_source_page(path: Path) -> list[Instruction]:
    """The instructions of a `ncu --page source --csv --print-source sass` export (one kernel)."""
    rows = list(csv.reader(path.read_text().splitlines()))
    header_at = next((i for i, row in enumerate(rows) if SOURCE in row and EXECUTED in row), None)
    if header_at is None:
        raise SystemExit(f"{path} has no '{SOURCE}' / '{EXECUTED}' header: export it with ncu --page source --csv "
                         "--print-source sass from a report that collected the SourceCounters section")
    header = rows[header_at]
    column = {name: header.index(name) for name in (SOURCE, ADDRESS, EXECUTED, SAMPLES)}
    reasons = [(name[len("stall_"):], i) for i, name in enumerate(header)
               if name.startswith("stall_") and "Not Issued" not in name]

    def number(row, i):
        return float(row[i].replace(",", "") or 0) if i < len(row) else 0.0

    return [Instruction(row[column[ADDRESS]], row[column[SOURCE]], number(row, column[EXECUTED]),
                        number(row, column[SAMPLES]), {reason: number(row, i) for reason, i in reasons})
            for row in rows[header_at + 1:] if len(row) > column[SOURCE]]


def opcode_mix(instructions: list[Instruction], units: float) -> list[tuple[str, float, float]]:
    """(opcode, executed per unit, share of all stall samples) by executed count, largest first."""
    executed, samples = Counter(), Counter()
    for instruction in instructions:
        executed[instruction.opcode] += instruction.executed
        samples[instruction.opcode] += instruction.samples
    total = sum(samples.values()) or 1.0
    return [(op, count / units, samples[op] / total) for op, count in executed.most_common()]


def stall_hotspots(instructions: list[Instruction], top: int) -> list[tuple[Instruction, float, list[tuple[str, float]]]]:
    """The `top` instructions by stall samples: (instruction, share of all samples, its three main reasons as shares
    of its own samples)."""
    total = sum(i.samples for i in instructions) or 1.0
    hottest = sorted(instructions, key=lambda i: -i.samples)[:top]
    return [(i, i.samples / total, sorted(((r, v / i.samples) for r, v in i.stalls.items() if v), key=lambda x: -x[1])[:3])
            for i in hottest if i.samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path, help="the source page, exported as above")
    parser.add_argument("--units", type=float, default=1.0, help="divide executed counts by this (e.g. block pairs x warps)")
    parser.add_argument("--top", type=int, default=30, help="how many opcodes and hotspots to print")
    parser.add_argument("--json", type=Path, help="also write the two tables to this file")
    args = parser.parse_args()
    if args.units <= 0:
        raise SystemExit(f"--units must be positive, got {args.units}")
    instructions = read_source_page(args.csv)
    mix, hotspots = opcode_mix(instructions, args.units)[:args.top], stall_hotspots(instructions, args.top)
    print(f"{len(instructions)} instructions, {sum(i.executed for i in instructions):,.0f} executed, "
          f"{sum(i.samples for i in instructions):,.0f} stall samples")
    print("| opcode | executed per unit | share of stall samples |\n|---|---|---|")
    for op, per_unit, share in mix:
        print(f"| {op} | {per_unit:.2f} | {share:.1%} |")
    print("\n| address | instruction | executed per unit | share of stall samples | main reasons |\n|---|---|---|---|---|")
    for instruction, share, reasons in hotspots:
        why = ", ".join(f"{reason} {fraction:.0%}" for reason, fraction in reasons)
        print(f"| {instruction.address} | `{instruction.source.strip()[:70]}` | {instruction.executed / args.units:.2f} | "
              f"{share:.1%} | {why} |")
    if args.json:
        args.json.write_text(json.dumps({
            "opcodes": [{"opcode": op, "per_unit": per_unit, "stall_share": share} for op, per_unit, share in mix],
            "hotspots": [{"address": i.address, "source": i.source, "per_unit": i.executed / args.units,
                          "stall_share": share, "reasons": dict(reasons)} for i, share, reasons in hotspots],
        }, indent=1))


if __name__ == "__main__":
    main()
