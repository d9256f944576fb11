"""`python -m longcat_jax.parity [--fixtures DIR] [--only GROUPS] [--dtype float32|bfloat16]`.

Runs every parity group (or those named) on a fixture folder, prints one line per case and a
summary, and exits non-zero if any case fails, any requested group is not implemented or has no cases.

The folder is `--fixtures`, else `$LONGCAT_FIXTURES`, else the repository's `tests/fixtures/longcat_ref`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from pathlib import Path

import jax

from longcat_jax.parity.fixtures import MISSING_FIXTURES_HINT, resolve_fixtures_dir
from longcat_jax.parity.report import CaseResult, format_line, summary_line

GROUPS = ("dit", "bsa", "vae", "t5", "scheduler", "sample")
DTYPES = ("float32", "bfloat16")


def _parse_groups(values: list[str] | None) -> list[str]:
    if not values:
        return list(GROUPS)
    groups = [g for value in values for g in value.split(",") if g]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SystemExit(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    return list(dict.fromkeys(groups))


def run_group(group: str, fixtures: Path, dtype: str) -> list[CaseResult]:
    """The group's results; a missing module is one SKIP, a crash one FAIL naming the exception, and a group that
    compared nothing (its case list in the fixtures is empty) one FAIL: a check that checked nothing must not pass."""
    module_name = f"longcat_jax.parity.{group}"
    try:
        module = importlib.import_module(module_name)
        results = list(module.run(fixtures, dtype))
        return results or [CaseResult("*", float("nan"), float("nan"), "FAIL",
                                      note=f"group {group}: no cases in the fixtures")]
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return [CaseResult("*", float("nan"), float("nan"), "SKIP", note=f"group not implemented ({module_name})")]
        return _crashed(e)
    except Exception as e:  # a crashing group must not hide the other groups' results
        return _crashed(e)


def _crashed(error: Exception) -> list[CaseResult]:
    traceback.print_exc(file=sys.stderr)
    return [CaseResult("*", float("nan"), float("nan"), "FAIL", note=f"{type(error).__name__}: {error}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longcat_jax.parity", description=__doc__.split("\n\n")[1])
    parser.add_argument("--fixtures", type=Path,
                        help="fixture folder (default: $LONGCAT_FIXTURES, else the repository's tests/fixtures/longcat_ref)")
    parser.add_argument("--only", nargs="+", metavar="GROUPS",
                        help=f"groups to run, space or comma separated (default: all of {', '.join(GROUPS)})")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model weights and activations")
    args = parser.parse_args(argv)
    fixtures = resolve_fixtures_dir(args.fixtures)
    if not fixtures.is_dir():
        parser.error(f"fixture folder {fixtures} not found; pass --fixtures DIR or {MISSING_FIXTURES_HINT}")
    groups = _parse_groups(args.only)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.dtype == "float32":
        # Full float32 matmuls (GPUs would otherwise use TF32 and miss the 1e-4 tolerances).
        jax.config.update("jax_default_matmul_precision", "highest")

    print(f"fixtures: {fixtures}", file=sys.stderr, flush=True)
    results: list[CaseResult] = []
    for group in groups:
        for result in run_group(group, fixtures, args.dtype):
            print(format_line(group, result), flush=True)
            results.append(result)
    print(summary_line(results), flush=True)
    return 0 if all(r.status == "PASS" for r in results) and results else 1


if __name__ == "__main__":
    sys.exit(main())
